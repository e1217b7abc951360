"""Request bodies bounded while they stream in: an ASGI middleware in front of the API.

A request whose ``Content-Length`` is over ``max_bytes`` is answered ``413`` before any of its body is read (and,
with ``Expect: 100-continue``, before the client sends it). A body without a length (chunked) is counted as the
application reads it: the message that passes ``max_bytes`` stops the request with ``413``, and nothing more of it
is kept — the process holds at most one chunk beyond the limit, whatever the client goes on sending. The ``413``
closes the connection (``Connection: close``), so the server does not drain the rest either.

The body of the answer names the limit, never the content: ``{"reason": "payload_too_large", "detail": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fraudpipe.contracts import Reason

__all__ = ["BodyLimit", "BodyTooLargeError"]


class BodyTooLargeError(Exception):
    """Raised into the application by the counting ``receive`` when the body passes the limit."""


class BodyLimit:
    """ASGI middleware (see the module docstring). ``on_refused`` is called once per refused request (metrics)."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_refused: Callable[[], None] | None = None) -> None:
        self.app, self.max_bytes, self.on_refused = app, max_bytes, on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope["headers"])
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(f"request body over {self.max_bytes} bytes")
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLargeError:
            if started:  # the application answered before it read past the limit: nothing left to say
                return
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        if self.on_refused is not None:
            self.on_refused()
        body = json.dumps({
            "reason": Reason.PAYLOAD_TOO_LARGE.value,
            "detail": f"request body over {self.max_bytes} bytes",
        }).encode()  # fmt: skip
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared length, if any (the server has already refused a malformed or repeated one)."""
    for name, value in headers:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None
