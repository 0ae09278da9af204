"""The same functions as :mod:`outbox`, for ``psycopg.AsyncConnection``."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import psycopg

from ._common import (
    BARRIER_CHECK,
    BARRIER_COMMIT,
    BARRIER_PURGE,
    BARRIER_READ,
    CANCEL,
    CONFIRM,
    EXTEND,
    STATUS,
    CheckedFirst,
    Message,
    NotPrepared,
    Outcome,
    Status,
    enqueue_query,
    message_id,
    prepare_query,
    same,
)

__all__ = [
    "cancel",
    "check",
    "confirm",
    "decide",
    "enqueue",
    "extend",
    "in_local_tx",
    "prepare",
    "purge_barrier",
    "status",
]

Conn = psycopg.AsyncConnection[tuple[object, ...]]


async def _one(conn: Conn, query: str, args: list[object]) -> object:
    cur = await conn.execute(query, args)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def enqueue(conn: Conn, message: Message) -> UUID:
    """See :func:`outbox.enqueue`."""
    query, args = enqueue_query(message)
    return message_id(str(await _one(conn, query, args)))


async def prepare(
    conn: Conn,
    message: Message,
    producer: str | None = None,
    ttl: timedelta = timedelta(minutes=5),
) -> UUID:
    """See :func:`outbox.prepare`."""
    query, args = prepare_query(message, producer, ttl)
    return message_id(str(await _one(conn, query, args)))


async def in_local_tx(local_tx: Conn, message: UUID | str) -> None:
    """See :func:`outbox.in_local_tx`."""
    if await _one(local_tx, BARRIER_COMMIT, [message_id(message)]) == 0:
        raise CheckedFirst(str(message))


async def confirm(conn: Conn, message: UUID | str) -> None:
    """See :func:`outbox.confirm`."""
    if not await _one(conn, CONFIRM, [message_id(message)]):
        raise NotPrepared(str(message))


async def cancel(conn: Conn, message: UUID | str) -> None:
    """See :func:`outbox.cancel`."""
    if not await _one(conn, CANCEL, [message_id(message)]):
        raise NotPrepared(str(message))


async def extend(conn: Conn, message: UUID | str, ttl: timedelta) -> bool:
    """See :func:`outbox.extend`."""
    return bool(await _one(conn, EXTEND, [message_id(message), ttl]))


async def status(conn: Conn, message: UUID | str) -> Status | None:
    """See :func:`outbox.status`."""
    cur = await conn.execute(STATUS, [message_id(message)])
    row = await cur.fetchone()
    return None if row is None else Status(*row)  # type: ignore[arg-type]


async def check(local_db: Conn, message: UUID | str) -> Outcome:
    """See :func:`outbox.check`."""
    if not local_db.autocommit:
        raise ValueError("outbox.aio.check needs an autocommit connection")
    mid = message_id(message)
    await _one(local_db, BARRIER_CHECK, [mid])
    return Outcome(str(await _one(local_db, BARRIER_READ, [mid])))


async def decide(conn: Conn, local_db: Conn, message: UUID | str) -> Outcome:
    """See :func:`outbox.decide`."""
    outcome = await check(local_db, message)
    try:
        await (confirm if outcome is Outcome.COMMITTED else cancel)(conn, message)
    except NotPrepared:
        s = await status(conn, message)
        if s is None or not same(outcome, s.status):
            raise
    return outcome


async def purge_barrier(local_db: Conn, older_than: timedelta) -> int:
    """See :func:`outbox.purge_barrier`."""
    cur = await local_db.execute(BARRIER_PURGE, [older_than])
    return cur.rowcount
