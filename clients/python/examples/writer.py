"""Writes three messages with the library, as an application would, and prints their ids:
a JSON message with enqueue, a bytes message with enqueue, and a two-phase message prepared,
run through a local transaction and confirmed. The relay's end-to-end test
(tests/clients_e2e.rs) runs it and checks what reaches RabbitMQ.

    python examples/writer.py OUTBOX_URL LOCAL_URL DESTINATION
"""

from __future__ import annotations

import sys

import psycopg

import outbox
from outbox import Message


def main(outbox_url: str, local_url: str, destination: str) -> None:
    with psycopg.connect(outbox_url) as conn:
        json_id = outbox.enqueue(conn, Message(destination, {"lang": "python"}, key="k"))
        bytes_id = outbox.enqueue(
            conn, Message(destination, b"\x00\xffpy", key="k", content_type="application/x-bytes")
        )
        conn.commit()
        prepared = outbox.prepare(
            conn, Message(destination, {"two_phase": True}, key="k"), "writer"
        )
        conn.commit()
        with psycopg.connect(local_url) as local:
            local.execute(outbox.BARRIER_SCHEMA)
            local.commit()
            outbox.in_local_tx(local, prepared)
            local.commit()
        outbox.confirm(conn, prepared)
        conn.commit()
    print(json_id, bytes_id, prepared)


if __name__ == "__main__":
    main(*sys.argv[1:4])
