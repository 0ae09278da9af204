"""The shared test vectors (clients/test-vectors.json), sync and async."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import outbox
from outbox import Message, aio

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "test-vectors.json").read_text())[
    "cases"
]


def message(spec: dict[str, Any]) -> Message:
    payload = bytes.fromhex(spec["payload_hex"]) if "payload_hex" in spec else spec["payload"]
    return Message(
        destination=spec["destination"],
        payload=payload,
        key=spec.get("key"),
        routing_key=spec.get("routing_key"),
        headers=spec.get("headers", {}),
        content_type=spec.get("content_type"),
    )


def row_of(owner: psycopg.Connection[Any], message_id: object) -> dict[str, Any]:
    cur = owner.execute(
        """SELECT status::text, destination, message_key, routing_key, headers, content_type,
                  payload, producer
             FROM outbox.messages WHERE message_id = %s""",
        [message_id],
    )
    r = cur.fetchone()
    assert r is not None
    return dict(
        zip(
            [
                "status",
                "destination",
                "message_key",
                "routing_key",
                "headers",
                "content_type",
                "payload",
                "producer",
            ],
            r,
            strict=True,
        )
    )


def expected_row(expect: dict[str, Any]) -> dict[str, Any]:
    row = dict(expect)
    if "payload_hex" in row:
        row["payload"] = bytes.fromhex(row.pop("payload_hex"))
    else:
        row["payload"] = json.dumps(row["payload"]).encode()
    return row


def normalize(row: dict[str, Any]) -> dict[str, Any]:
    # jsonb's text form of a JSON payload is compared as JSON, not as bytes.
    if row["content_type"] == "application/json":
        row = {**row, "payload": json.loads(row["payload"])}
    return row


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
def test_vector(case: dict[str, Any], outbox_db: str, owner: psycopg.Connection[Any]) -> None:
    with psycopg.connect(outbox_db) as conn:
        try:
            if case["call"] == "enqueue":
                mid = outbox.enqueue(conn, message(case["message"]))
            else:
                mid = outbox.prepare(
                    conn,
                    message(case["message"]),
                    case.get("producer"),
                    timedelta(seconds=case["ttl_seconds"]),
                )
            conn.commit()
        except psycopg.Error as e:
            conn.rollback()
            error = case["expect"].get("error")
            assert error is not None, f"unexpected error: {e}"
            assert e.sqlstate == error["sqlstate"]
            assert error["message_contains"] in str(e)
            count = owner.execute("SELECT count(*) FROM outbox.messages").fetchone()
            assert count == (0,), "a refused call inserted nothing"
            return
    assert "row" in case["expect"], "expected an error"
    assert normalize(row_of(owner, mid)) == normalize(expected_row(case["expect"]["row"]))


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
async def test_vector_async(
    case: dict[str, Any], outbox_db: str, owner: psycopg.Connection[Any]
) -> None:
    async with await psycopg.AsyncConnection.connect(outbox_db) as conn:
        try:
            if case["call"] == "enqueue":
                mid = await aio.enqueue(conn, message(case["message"]))
            else:
                mid = await aio.prepare(
                    conn,
                    message(case["message"]),
                    case.get("producer"),
                    timedelta(seconds=case["ttl_seconds"]),
                )
            await conn.commit()
        except psycopg.Error as e:
            error = case["expect"].get("error")
            assert error is not None, f"unexpected error: {e}"
            assert (e.sqlstate, error["message_contains"] in str(e)) == (error["sqlstate"], True)
            return
    assert normalize(row_of(owner, mid)) == normalize(expected_row(case["expect"]["row"]))
