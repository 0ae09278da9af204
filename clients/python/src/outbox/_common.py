"""What the sync and async APIs share: the message, the SQL, the errors, argument building."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from importlib.resources import files
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

#: Creates the check-back barrier table in the writer's own database (idempotent). Run it with
#: your migrations, or once at start.
BARRIER_SCHEMA: str = files(__package__).joinpath("barrier.sql").read_text()


class NotPrepared(Exception):
    """confirm or cancel found no prepared message with that id: it was decided already (by the
    writer or by check-back), or it expired."""


class CheckedFirst(Exception):
    """The relay's check-back reached the barrier before this local transaction and was answered
    "rolled back". The local transaction must roll back."""


class Outcome(str, Enum):
    """Check-back's answer."""

    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Message:
    """What a writer publishes.

    ``payload`` is JSON (any value ``json.dumps`` takes), or ``bytes`` together with
    ``content_type`` (Avro, Protobuf, ...).
    """

    destination: str
    payload: Any
    key: str | None = None
    routing_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    deliver_at: datetime | None = None


@dataclass(frozen=True)
class Status:
    """What became of a message (``outbox.status``)."""

    status: str
    attempts: int
    last_error: str | None
    published_at: datetime | None


def _binary(m: Message) -> bool:
    if isinstance(m.payload, (bytes, bytearray, memoryview)):
        if m.content_type is None:
            raise ValueError("outbox: a bytes payload needs Message.content_type")
        return True
    if m.content_type is not None:
        raise ValueError(
            "outbox: Message.content_type is for bytes payloads; JSON is application/json"
        )
    return False


def enqueue_query(m: Message) -> tuple[str, list[Any]]:
    """The statement and arguments of enqueue."""
    if _binary(m):
        return (
            "SELECT outbox.enqueue_bytes(%s, %s, %s, %s, %s, %s, %s)",
            [
                m.destination,
                bytes(m.payload),
                m.content_type,
                m.key,
                m.routing_key,
                Jsonb(m.headers),
                m.deliver_at,
            ],
        )
    return (
        "SELECT outbox.enqueue(%s, %s, %s, %s, %s, %s)",
        [m.destination, _json(m.payload), m.key, m.routing_key, Jsonb(m.headers), m.deliver_at],
    )


def prepare_query(m: Message, producer: str | None, ttl: timedelta) -> tuple[str, list[Any]]:
    """The statement and arguments of prepare."""
    if _binary(m):
        return (
            "SELECT outbox.prepare_bytes(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                m.destination,
                bytes(m.payload),
                m.content_type,
                m.key,
                m.routing_key,
                Jsonb(m.headers),
                ttl,
                producer,
                m.deliver_at,
            ],
        )
    return (
        "SELECT outbox.prepare(%s, %s, %s, %s, %s, %s, %s, %s)",
        [
            m.destination,
            _json(m.payload),
            m.key,
            m.routing_key,
            Jsonb(m.headers),
            ttl,
            producer,
            m.deliver_at,
        ],
    )


def _json(payload: Any) -> Jsonb | None:
    # None stays NULL, which the SQL API refuses with its own message.
    return None if payload is None else Jsonb(payload, dumps=json.dumps)


CONFIRM = "SELECT outbox.commit(%s)"
CANCEL = "SELECT outbox.rollback(%s)"
EXTEND = "SELECT outbox.extend(%s, %s)"
STATUS = "SELECT status::text, attempts, last_error, published_at FROM outbox.status(%s)"
# Inside the local transaction. ON CONFLICT DO NOTHING: a row already there is check-back's
# 'rolled_back' (it was first), reported as nothing inserted rather than as an error that
# would abort the caller's transaction.
BARRIER_COMMIT = """
WITH inserted AS (
    INSERT INTO outbox_barrier (message_id, outcome) VALUES (%s, 'committed')
    ON CONFLICT (message_id) DO NOTHING
    RETURNING 1
)
SELECT count(*)::int FROM inserted
"""
# Check-back's claim: 'rolled_back' unless a row is there; a local transaction still open makes
# it wait for that transaction's end. Then a statement of its own reads the row, with a
# snapshot taken after the wait (docs/check-back.md).
BARRIER_CHECK = BARRIER_COMMIT.replace("'committed'", "'rolled_back'")
BARRIER_READ = "SELECT outcome FROM outbox_barrier WHERE message_id = %s"
BARRIER_PURGE = "DELETE FROM outbox_barrier WHERE created_at < now() - %s"


def message_id(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)


def same(outcome: Outcome, status: str) -> bool:
    """Whether a message's status is what its local transaction's outcome makes it."""
    if outcome is Outcome.COMMITTED:
        return status in ("committed", "published")
    return status == "rolled_back"
