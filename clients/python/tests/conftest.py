"""Fixtures: fresh databases on the Postgres the relay's tests use (scripts/services.sh up
postgres), the outbox migrated by the relay binary, writes as a member of outbox_writer."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[3]
ADMIN_URL = os.environ.get(
    "OUTBOX_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:54329/postgres"
)
WRITER_LOGIN = "outbox_writer_test"


def relay_bin() -> str:
    path = os.environ.get("OUTBOX_TEST_RELAY_BIN", str(ROOT / "target/debug/outbox-relay"))
    if not Path(path).exists():
        pytest.fail(f"no relay binary at {path} (cargo build, or set OUTBOX_TEST_RELAY_BIN)")
    return path


def url_of(database: str, user: str | None = None) -> str:
    """ADMIN_URL with another database (and user): a URL, as the relay reads it too."""
    u = urlsplit(ADMIN_URL)
    netloc = u.netloc if user is None else f"{user}@{u.hostname}:{u.port}"
    return urlunsplit((u.scheme, netloc, f"/{database}", u.query, ""))


@pytest.fixture
def fresh_db() -> Iterator[str]:
    """A database of its own, dropped afterwards; yields its name."""
    name = f"py_{uuid.uuid4().hex}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def outbox_db(fresh_db: str) -> str:
    """A migrated outbox database; returns the URL of a member of outbox_writer."""
    owner = url_of(fresh_db)
    subprocess.run(
        [relay_bin(), "migrate"],
        env={
            **os.environ,
            "OUTBOX_RELAY__DATABASE__URL": owner,
            "OUTBOX_RELAY__LOG__FORMAT": "text",
        },
        check=True,
        capture_output=True,
    )
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(
            f"""DO $$ BEGIN
                  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{WRITER_LOGIN}') THEN
                      CREATE ROLE {WRITER_LOGIN} LOGIN IN ROLE outbox_writer;
                  END IF;
                EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                END $$"""
        )
    return url_of(fresh_db, WRITER_LOGIN)


@pytest.fixture
def owner(outbox_db: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """The owner's connection, to read rows back."""
    with psycopg.connect(url_of(urlsplit(outbox_db).path.lstrip("/")), autocommit=True) as conn:
        yield conn


@pytest.fixture
def local_db() -> Iterator[str]:
    """The writer's own database, with the barrier and an orders table."""
    name = f"py_local_{uuid.uuid4().hex}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    from outbox import BARRIER_SCHEMA

    with psycopg.connect(url_of(name), autocommit=True) as conn:
        conn.execute(BARRIER_SCHEMA)
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY)")
    try:
        yield url_of(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
