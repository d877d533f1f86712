"""Runner streams (blocking iterators fed by the engine thread) as server-sent events.

The Runner's stream is a generator that blocks between tokens, so each one is drained by its
own thread and handed to the event loop. When the client goes away the response stops the
thread, which closes the generator; closing it cancels the request in the engine and frees
its KV blocks.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from mistralrs.errors import InvalidRequestError
from mistralrs.server.errors import error_body

log = logging.getLogger(__name__)

KEEP_ALIVE = ": keep-alive\n\n"
"""An SSE comment: clients ignore it, proxies see a live connection."""
DONE = "data: [DONE]\n\n"

_END = object()


class _Failure:
    def __init__(self, error: Exception):
        self.error = error


class BackgroundIterator:
    """Drains a blocking generator in its own thread from the moment it is made, handing the
    items to the event loop that made it. After `stop()`, the thread closes the generator as
    soon as it next wakes (at the request's next token)."""

    def __init__(self, generator: Iterator[Any]):
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue = asyncio.Queue()
        self._stopped = threading.Event()
        threading.Thread(target=self._drain, args=(generator,), name="mistralrs-stream",
                         daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def _post(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def _drain(self, generator) -> None:
        try:
            for item in generator:
                if self._stopped.is_set():
                    break
                self._post(item)
        except Exception as e:  # handed to the consumer, which reports it to the client
            self._post(_Failure(e))
        finally:
            generator.close()
            self._post(_END)

    async def items(self, idle_seconds: float) -> AsyncIterator[Any | None]:
        """The items in order, with a None whenever `idle_seconds` pass without one."""
        while True:
            try:
                item = await asyncio.wait_for(self._items.get(), idle_seconds)
            except asyncio.TimeoutError:
                yield None
                continue
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item


def _data(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return f"data: {text}\n\n"


async def server_sent_events(source: BackgroundIterator, keep_alive_seconds: float,
                             render: Callable[[Any], dict[str, Any] | None]) -> AsyncIterator[str]:
    """`data:` events of each rendered item (None skips it), keep-alive comments while idle, an
    error event if the stream fails after it started, and `data: [DONE]` last."""
    try:
        async for item in source.items(keep_alive_seconds):
            if item is None:
                yield KEEP_ALIVE
            elif (payload := render(item)) is not None:
                yield _data(payload)
    except Exception as e:  # the status line is sent already: report in the stream, as OpenAI
        if isinstance(e, InvalidRequestError):
            yield _data(error_body(str(e), "invalid_request_error"))
        else:
            log.exception("stream failed")
            yield _data(error_body(f"generation failed: {e}", "server_error"))
    yield DONE


class EventStreamResponse(StreamingResponse):
    """A server-sent events response whose `on_close` runs however it ends: finished, failed,
    or the client gone."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
