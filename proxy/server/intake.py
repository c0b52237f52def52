"""Intake: reading a request body against a deadline and a memory budget shared by every request in flight.

A client that sends headers and then stalls, or trickles its body, would otherwise hold a
connection and up to `max_body_mb` of memory for as long as it likes; eight such clients took the
proxy from 44 to 550 MiB. Here a body must keep arriving (no silence longer than `idle_s`) at an
average of at least `min_rate` bytes/s after that same grace, and all bodies held at once may not
exceed `max_buffered` bytes: past it the request is refused with 503 before anything is forwarded,
so nothing is billed and the client may simply retry.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import StreamReader, web

log = logging.getLogger(__name__)

class BodyRefused(Exception):
    """The body was not taken: `status` (408 or 503) and a message for the error envelope."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class Intake:
    def __init__(self, max_body: int, max_buffered: int, idle_s: float, min_rate: float) -> None:
        self._max_body = max_body
        self._max_buffered = max_buffered
        self._idle_s = idle_s
        self._min_rate = min_rate
        self.buffered = 0  # bytes of request bodies held right now, across all requests
        self._held: dict[int, int] = {}  # id(request) -> its bytes in `buffered`, until release()

    async def read(self, request: web.Request) -> bytes:
        """The whole body, or BodyRefused / web.HTTPRequestEntityTooLarge.

        What it holds stays counted until release(request), which the app calls when the
        request's handler is done (the body is kept for the whole exchange).
        """
        declared = request.content_length
        if declared is not None and self.buffered + declared > self._max_buffered:
            raise self._full(request)
        start = asyncio.get_running_loop().time()
        chunks: list[bytes] = []
        received = 0
        content = request.content
        while True:
            # What has arrived already needs no timer: a small body comes in one read with its
            # headers, and a timer per request was a few per cent of the proxy's CPU.
            failed = content.exception()
            if failed is not None:
                raise failed
            if content.at_eof():
                break
            chunk = content.read_nowait()
            if not chunk:
                chunk = await self._wait(request, content, start, received, declared)
                if not chunk:
                    break
            received += len(chunk)
            if received > self._max_body:
                raise web.HTTPRequestEntityTooLarge(max_size=self._max_body, actual_size=received)
            if self.buffered + len(chunk) > self._max_buffered:
                raise self._full(request)
            self.buffered += len(chunk)
            self._held[id(request)] = self._held.get(id(request), 0) + len(chunk)
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _wait(
        self, request: web.Request, content: StreamReader, start: float, received: int, declared: int | None
    ) -> bytes:
        loop = asyncio.get_running_loop()
        # No silence over idle_s, and on average min_rate once the first idle_s has passed.
        now = loop.time()
        deadline = min(now + self._idle_s, start + self._idle_s + received / self._min_rate)
        try:
            async with asyncio.timeout_at(deadline):
                return await content.readany()
        except TimeoutError:
            log.warning("event=request_body_stalled received=%d declared=%s after_s=%.1f", received, declared, loop.time() - start)
            self._release_held(request)
            # Mark the body ended, or aiohttp would wait up to its lingering time (10 s) for the
            # rest of it before closing; with the 408 marked Connection: close it closes at once.
            content.feed_eof()
            raise BodyRefused(408, "openrouter-spend: the request body stopped arriving (or came too slowly); send it again") from None

    def release(self, request: web.Request) -> None:
        self._release_held(request)

    def _release_held(self, request: web.Request) -> None:
        self.buffered -= self._held.pop(id(request), 0)

    def _full(self, request: web.Request) -> BodyRefused:
        log.warning("event=request_bodies_over_budget buffered=%d max_buffered=%d declared=%s", self.buffered, self._max_buffered, request.content_length)
        self.release(request)
        return BodyRefused(503, "openrouter-spend: too many large request bodies in flight; retry shortly", retry_after_s=1)
