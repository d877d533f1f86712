"""What the server refuses before doing work: oversized bodies (413) and requests beyond the
number it keeps in flight (429)."""
from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mistralrs.server.errors import APIError, error_response


class BodySizeLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413, whether its Content-Length
    announces it (refused before reading) or it arrives chunked (refused once the count passes
    the limit)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, self._message(), code="request_too_large")
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, counting_receive, send)


class Admission:
    """Counts the generation requests in flight (queued in the engine or running). Past `limit`
    a new one is refused at once with 429 and a Retry-After, which clients such as OpenAI's
    retry, rather than joining a queue that grows without bound. Used from the event loop only."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("the limit of requests in flight must be at least 1")
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> None:
        if self.in_flight >= self.limit:
            raise APIError(429, f"the server is busy: {self.in_flight} requests are in flight, "
                                f"the limit is {self.limit}; retry shortly",
                           type="server_overloaded", code="queue_full",
                           headers={"Retry-After": "1"})
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
