"""The project README's Python snippet is place_order's body, and it runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg

import outbox
from outbox import Message

README = Path(__file__).resolve().parents[3] / "README.md"


def place_order(
    outbox_db: psycopg.Connection[Any], local_db: psycopg.Connection[Any], msg: Message
) -> None:
    mid = outbox.prepare(outbox_db, msg, producer="orders")
    try:
        with local_db.transaction():
            local_db.execute("INSERT INTO orders (id) VALUES (42)")
            outbox.in_local_tx(local_db, mid)  # the barrier row
    finally:
        # Even a failed COMMIT may have committed: the barrier knows.
        outbox.decide(outbox_db, local_db, mid)  # a crash before this is what check-back covers


def test_the_readme_snippet_is_place_order() -> None:
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README.md has no Python snippet"
    source = Path(__file__).read_text()
    body = source.split("def place_order(")[1].split(") -> None:\n", 1)[1].split("\n\n\n")[0]
    dedented = "\n".join(line[4:] for line in body.splitlines())
    assert block.group(1).strip() == dedented.strip()


def test_place_order(outbox_db: str, local_db: str, owner: psycopg.Connection[Any]) -> None:
    msg = Message("orders", {"order": 42}, key="order-42")
    with (
        psycopg.connect(outbox_db, autocommit=True) as out,
        psycopg.connect(local_db, autocommit=True) as local,
    ):
        place_order(out, local, msg)
    row = owner.execute("SELECT status::text, producer FROM outbox.messages").fetchone()
    assert row == ("committed", "orders")
