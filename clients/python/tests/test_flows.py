"""The classic and two-phase flows, status and extend, and the check-back barrier."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import outbox
from outbox import CheckedFirst, Message, NotPrepared, Outcome, aio
from outbox.http import asgi_check_app, wsgi_check_app

ORDER = Message(destination="orders", payload={"order": 42}, key="order-42")


def test_enqueue_commits_or_rolls_back_with_the_callers_transaction(
    outbox_db: str, owner: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(outbox_db) as conn:
        kept = outbox.enqueue(conn, ORDER)
        conn.commit()
        dropped = outbox.enqueue(conn, ORDER)
        conn.rollback()
    rows = owner.execute("SELECT message_id, status::text FROM outbox.messages").fetchall()
    assert rows == [(kept, "committed")]
    assert dropped != kept


def test_prepare_then_confirm_or_cancel_once(outbox_db: str) -> None:
    with psycopg.connect(outbox_db, autocommit=True) as conn:
        for decide, final in [(outbox.confirm, "committed"), (outbox.cancel, "rolled_back")]:
            mid = outbox.prepare(conn, ORDER, producer="orders", ttl=timedelta(minutes=1))
            assert outbox.status(conn, mid) == outbox.Status("prepared", 0, None, None)
            decide(conn, mid)
            s = outbox.status(conn, mid)
            assert s is not None and s.status == final
            with pytest.raises(NotPrepared):
                outbox.confirm(conn, mid)
        assert outbox.status(conn, uuid.uuid4()) is None


def test_extend_gives_a_prepared_message_more_time(
    outbox_db: str, owner: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(outbox_db, autocommit=True) as conn:
        mid = outbox.prepare(conn, ORDER, ttl=timedelta(seconds=30))
        assert outbox.extend(conn, mid, timedelta(hours=2))
        left = owner.execute(
            "SELECT expires_at - now() FROM outbox.messages WHERE message_id = %s", [mid]
        ).fetchone()
        assert left is not None and left[0] > timedelta(hours=1)
        outbox.cancel(conn, mid)
        assert not outbox.extend(conn, mid, timedelta(hours=1))


def test_a_check_during_the_local_transaction_waits_and_is_right_both_ways(local_db: str) -> None:
    for commit in (True, False):
        mid = uuid.uuid4()
        answers: list[Outcome] = []
        with psycopg.connect(local_db) as local_tx:
            local_tx.execute("INSERT INTO orders VALUES (%s)", [mid.int % 1_000_000])
            outbox.in_local_tx(local_tx, mid)

            asker = threading.Thread(target=ask, args=(local_db, mid, answers))
            asker.start()
            wait_for_lock_wait(local_db)
            assert answers == [], "answered while the local transaction was open"
            local_tx.commit() if commit else local_tx.rollback()
            asker.join(30)
        assert answers == [Outcome.COMMITTED if commit else Outcome.ROLLED_BACK]


def ask(url: str, mid: uuid.UUID, answers: list[Outcome]) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        answers.append(outbox.check(c, mid))


def wait_for_lock_wait(url: str) -> None:
    """The positive signal that a check waits on the local transaction's barrier row."""
    deadline = time.monotonic() + 30
    with psycopg.connect(url, autocommit=True) as c:
        while True:
            row = c.execute(
                """SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND wait_event_type = 'Lock'
                      AND query LIKE '%%outbox_barrier%%'"""
            ).fetchone()
            if row == (1,):
                return
            assert time.monotonic() < deadline, "no check waited on the local transaction"
            time.sleep(0.01)


def test_a_check_before_the_local_transaction_makes_it_fail(local_db: str) -> None:
    mid = uuid.uuid4()
    with psycopg.connect(local_db, autocommit=True) as c:
        assert outbox.check(c, mid) == Outcome.ROLLED_BACK
    with psycopg.connect(local_db) as local_tx, pytest.raises(CheckedFirst):
        outbox.in_local_tx(local_tx, mid)
    with psycopg.connect(local_db, autocommit=True) as c:
        assert outbox.check(c, mid) == Outcome.ROLLED_BACK, "the answer never changes"


def call_wsgi(
    app: Any, body: bytes, auth: str | None = None, method: str = "POST"
) -> tuple[str, Any]:
    status: list[str] = []
    environ = {
        "REQUEST_METHOD": method,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    if auth:
        environ["HTTP_AUTHORIZATION"] = auth
    out = b"".join(app(environ, lambda s, h: status.append(s)))
    return status[0], json.loads(out)


def test_the_wsgi_app_answers_from_the_barrier_and_checks_its_token(local_db: str) -> None:
    mid = uuid.uuid4()
    with psycopg.connect(local_db) as tx:
        outbox.in_local_tx(tx, mid)
        tx.commit()
    app = wsgi_check_app(lambda: psycopg.connect(local_db, autocommit=True), token="t0ken")
    body = json.dumps(
        {
            "message_id": str(mid),
            "destination": "orders",
            "message_key": None,
            "prepared_at": "2026-12-05T10:00:00Z",
        }
    ).encode()
    assert call_wsgi(app, body)[0].startswith("401")
    assert call_wsgi(app, body, "Bearer wrong")[0].startswith("401")
    assert call_wsgi(app, b'{"message_id": "x"}', "Bearer t0ken")[0].startswith("400")
    assert call_wsgi(app, body, "Bearer t0ken", method="GET")[0].startswith("405")
    assert call_wsgi(app, body, "Bearer t0ken") == ("200 OK", {"status": "committed"})


async def test_the_asgi_app_and_the_async_api(outbox_db: str, local_db: str) -> None:
    async with await psycopg.AsyncConnection.connect(outbox_db, autocommit=True) as conn:
        mid = await aio.prepare(conn, ORDER, producer="orders")
        async with await psycopg.AsyncConnection.connect(local_db) as local_tx:
            await aio.in_local_tx(local_tx, mid)
            await local_tx.commit()
        app = asgi_check_app(lambda: psycopg.AsyncConnection.connect(local_db, autocommit=True))
        sent: list[dict[str, Any]] = []
        body = json.dumps({"message_id": str(mid)}).encode()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(event: dict[str, Any]) -> None:
            sent.append(event)

        await app({"type": "http", "method": "POST", "headers": []}, receive, send)
        assert sent[0]["status"] == 200
        assert json.loads(sent[1]["body"]) == {"status": "committed"}
        await aio.confirm(conn, mid)
        s = await aio.status(conn, mid)
        assert s is not None and s.status == "committed"
        with pytest.raises(NotPrepared):
            await aio.cancel(conn, mid)


def test_decide_follows_the_local_transaction_whatever_it_returned(
    outbox_db: str, local_db: str
) -> None:
    with (
        psycopg.connect(outbox_db, autocommit=True) as out,
        psycopg.connect(local_db, autocommit=True) as local,
    ):
        for commit in (True, False):
            mid = outbox.prepare(out, ORDER, producer="orders")
            with local.transaction(force_rollback=not commit):
                outbox.in_local_tx(local, mid)
            want = Outcome.COMMITTED if commit else Outcome.ROLLED_BACK
            assert outbox.decide(out, local, mid) == want
            s = outbox.status(out, mid)
            assert s is not None and s.status == want.value
            assert outbox.decide(out, local, mid) == want, "deciding again changes nothing"


def test_a_check_waits_at_most_lock_timeout_then_answers_unknown(local_db: str) -> None:
    mid = uuid.uuid4()
    app = wsgi_check_app(
        lambda: psycopg.connect(local_db, autocommit=True), lock_timeout=timedelta(milliseconds=100)
    )
    with psycopg.connect(local_db) as local_tx:
        outbox.in_local_tx(local_tx, mid)
        body = json.dumps({"message_id": str(mid)}).encode()
        assert call_wsgi(app, body) == ("200 OK", {"status": "unknown"})
        local_tx.commit()
    assert call_wsgi(app, body) == ("200 OK", {"status": "committed"})
