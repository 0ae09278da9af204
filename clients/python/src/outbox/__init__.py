"""Write messages into an outbox-relay outbox in Postgres, with psycopg 3.

Two ways to write a message:

- :func:`enqueue`, inside the transaction that changes your business data, when that data is
  in the outbox's database: the message commits with it, atomically.
- The two-phase flow, when your local transaction runs in another database: :func:`prepare` in
  the outbox, :func:`in_local_tx` inside your local transaction (the check-back barrier row),
  then :func:`confirm` or :func:`cancel`. If your process dies before confirming, the relay
  asks your service, and :func:`check` (served by :mod:`outbox.http`) answers from the barrier.

:mod:`outbox.aio` has the same functions for ``psycopg.AsyncConnection``.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import psycopg

from ._common import (
    BARRIER_CHECK,
    BARRIER_COMMIT,
    BARRIER_PURGE,
    BARRIER_READ,
    BARRIER_SCHEMA,
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
    "BARRIER_SCHEMA",
    "CheckedFirst",
    "Message",
    "NotPrepared",
    "Outcome",
    "Status",
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

Conn = psycopg.Connection[tuple[object, ...]]


def _one(conn: Conn, query: str, args: list[object]) -> object:
    row = conn.execute(query, args).fetchone()
    assert row is not None
    return row[0]


def enqueue(conn: Conn, message: Message) -> UUID:
    """Writes a committed message in ``conn``'s current transaction: it is published if and only
    if that transaction commits. Returns its id, which consumers de-duplicate on."""
    query, args = enqueue_query(message)
    return message_id(str(_one(conn, query, args)))


def prepare(
    conn: Conn,
    message: Message,
    producer: str | None = None,
    ttl: timedelta = timedelta(minutes=5),
) -> UUID:
    """Writes a prepared message, published only once confirmed. ``producer`` names your service
    in the relay's ``[check_back.producers]``; without it the message rolls back at ``ttl``."""
    query, args = prepare_query(message, producer, ttl)
    return message_id(str(_one(conn, query, args)))


def in_local_tx(local_tx: Conn, message: UUID | str) -> None:
    """Writes the barrier row saying the local transaction commits ``message``. Call it inside
    that transaction, before its commit. Raises :class:`CheckedFirst` when check-back answered
    first: roll the local transaction back then."""
    if _one(local_tx, BARRIER_COMMIT, [message_id(message)]) == 0:
        raise CheckedFirst(str(message))


def confirm(conn: Conn, message: UUID | str) -> None:
    """Commits prepared ``message``: the relay publishes it. Raises :class:`NotPrepared`."""
    if not _one(conn, CONFIRM, [message_id(message)]):
        raise NotPrepared(str(message))


def cancel(conn: Conn, message: UUID | str) -> None:
    """Rolls back prepared ``message``: it is never published. Raises :class:`NotPrepared`."""
    if not _one(conn, CANCEL, [message_id(message)]):
        raise NotPrepared(str(message))


def extend(conn: Conn, message: UUID | str, ttl: timedelta) -> bool:
    """Prepared ``message`` now expires ``ttl`` from now; False if it is not prepared (any more)."""
    return bool(_one(conn, EXTEND, [message_id(message), ttl]))


def status(conn: Conn, message: UUID | str) -> Status | None:
    """What became of ``message``; None for an unknown id."""
    row = conn.execute(STATUS, [message_id(message)]).fetchone()
    return None if row is None else Status(*row)  # type: ignore[arg-type]


def check(local_db: Conn, message: UUID | str) -> Outcome:
    """Check-back's answer for ``message`` from the barrier. ``local_db`` must be in autocommit
    mode: each of the two statements commits on its own. Waits for a local transaction still
    open; answers ROLLED_BACK only when the local transaction did not commit and now never can."""
    if not local_db.autocommit:
        raise ValueError("outbox.check needs an autocommit connection")
    mid = message_id(message)
    _one(local_db, BARRIER_CHECK, [mid])
    return Outcome(str(_one(local_db, BARRIER_READ, [mid])))


def decide(conn: Conn, local_db: Conn, message: UUID | str) -> Outcome:
    """Confirms or cancels prepared ``message`` by what its local transaction did, as the barrier
    in ``local_db`` (autocommit) records it, and returns that. Call it once the local transaction
    is over, whatever happened: a COMMIT that failed on a lost connection may still have
    committed, and only the barrier knows. A message check-back decided already is left as it
    is; one that ended otherwise (it expired first) raises :class:`NotPrepared`."""
    outcome = check(local_db, message)
    try:
        (confirm if outcome is Outcome.COMMITTED else cancel)(conn, message)
    except NotPrepared:
        s = status(conn, message)
        if s is None or not same(outcome, s.status):
            raise
    return outcome


def purge_barrier(local_db: Conn, older_than: timedelta) -> int:
    """Deletes barrier rows older than ``older_than`` (more than your longest ttl)."""
    return local_db.execute(BARRIER_PURGE, [older_than]).rowcount
