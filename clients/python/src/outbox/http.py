"""Check-back endpoints: a WSGI app and an ASGI app that answer the relay's POST from the
barrier (docs/check-back.md). Mount one at the url of your ``[check_back.producers.<name>]``.

Each takes ``connect``, a callable that opens an autocommit connection to the service's own
database: ``lambda: psycopg.connect(url, autocommit=True)`` for WSGI,
``lambda: psycopg.AsyncConnection.connect(url, autocommit=True)`` for ASGI. The connection is
closed after each check. A check waits for a local transaction still open at most
``lock_timeout`` (keep it below the relay's ``timeout`` for this producer), then answers
``unknown`` and the relay asks again later.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import psycopg

from . import aio, check
from ._common import Outcome

__all__ = ["asgi_check_app", "wsgi_check_app"]

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_MAX_BODY = 64 * 1024


def _parse(body: bytes) -> str | None:
    try:
        request = json.loads(body)
    except ValueError:
        return None
    mid = request.get("message_id") if isinstance(request, dict) else None
    return mid if isinstance(mid, str) and _UUID.match(mid) else None


def _authorized(header: str | None, token: str | None) -> bool:
    return token is None or hmac.compare_digest(header or "", f"Bearer {token}")


def _answer(outcome: Outcome) -> bytes:
    return json.dumps({"status": outcome.value}).encode()


def _lock_timeout(t: timedelta) -> str:
    return f"SET lock_timeout = {int(t.total_seconds() * 1000)}"


def wsgi_check_app(
    connect: Callable[[], AbstractContextManager[psycopg.Connection[Any]]],
    token: str | None = None,
    lock_timeout: timedelta = timedelta(seconds=4),
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """A WSGI application answering check-back. ``token``: the bearer token the relay sends."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def reply(code: str, body: bytes) -> Iterable[bytes]:
            start_response(code, [("Content-Type", "application/json")])
            return [body]

        if environ.get("REQUEST_METHOD") != "POST":
            return reply("405 Method Not Allowed", b'{"error": "POST only"}')
        if not _authorized(environ.get("HTTP_AUTHORIZATION"), token):
            return reply("401 Unauthorized", b'{"error": "unauthorized"}')
        try:
            length = max(0, min(int(environ.get("CONTENT_LENGTH") or 0), _MAX_BODY))
        except ValueError:
            length = 0
        mid = _parse(environ["wsgi.input"].read(length))
        if mid is None:
            return reply("400 Bad Request", b'{"error": "message_id is not a uuid"}')
        try:
            with connect() as conn:
                conn.execute(_lock_timeout(lock_timeout))
                outcome = check(conn, mid)
        except psycopg.Error:
            outcome = Outcome.UNKNOWN
        return reply("200 OK", _answer(outcome))

    return app


ASGIApp = Callable[
    [
        dict[str, Any],
        Callable[[], Awaitable[dict[str, Any]]],
        Callable[[dict[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


def asgi_check_app(
    connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
    token: str | None = None,
    lock_timeout: timedelta = timedelta(seconds=4),
) -> ASGIApp:
    """An ASGI application answering check-back. ``token``: the bearer token the relay sends."""

    async def app(
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        async def reply(code: int, body: bytes) -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": code,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})

        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            return await reply(405, b'{"error": "POST only"}')
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not _authorized(headers.get("authorization"), token):
            return await reply(401, b'{"error": "unauthorized"}')
        body = b""
        more = True
        while more and len(body) <= _MAX_BODY:
            event = await receive()
            body += event.get("body", b"")
            more = event.get("more_body", False)
        mid = _parse(body[:_MAX_BODY])
        if mid is None:
            return await reply(400, b'{"error": "message_id is not a uuid"}')
        try:
            async with await connect() as conn:
                await conn.execute(_lock_timeout(lock_timeout))
                outcome = await aio.check(conn, mid)
        except psycopg.Error:
            outcome = Outcome.UNKNOWN
        await reply(200, _answer(outcome))

    return app
