"""A zero-latency fake OpenRouter for the benchmark: a raw asyncio HTTP/1.1 server, so it is never the bottleneck.

Any POST path answers like `/chat/completions`. Request headers shape the reply:
  X-Bench-Chunks: N      stream N content events, then a finish event, a usage event and [DONE]
  X-Bench-Delay-Ms: D    wait D ms before each event (0: the whole stream in one write)
  X-Bench-Fail: 500      answer 500 with OpenRouter's error envelope
  X-Bench-Fail: drop     cut the stream (connection reset) after 3 events
Without X-Bench-Chunks the reply is one JSON chat completion with usage and cost. The request
body is counted and dropped, never buffered whole, so a 10 MB body costs only the socket reads.

    python -m bench.upstream --port 9001
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

MODEL = "openai/gpt-4o"
# Fixed usage; the cost is gpt-4o's catalog price of it (1000 new + 200 cached input, 300 output).
USAGE: dict[str, Any] = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
    "cost": 0.00575,
    "is_byok": False,
}
_BASE = {"id": "gen-bench", "provider": "OpenAI", "model": MODEL, "created": 1, "object": "chat.completion.chunk"}


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def completion_body() -> bytes:
    body = {
        **_BASE,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello " * 20}, "finish_reason": "stop"}],
        "usage": USAGE,
    }
    return json.dumps(body).encode()


def stream_events(chunks: int) -> list[bytes]:
    events = [_event({**_BASE, "choices": [{"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}]}) for i in range(chunks)]
    events.append(_event({**_BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    events.append(_event({**_BASE, "choices": [], "usage": USAGE}))
    events.append(b"data: [DONE]\n\n")
    return events


def stream_length(chunks: int) -> int:
    """Bytes of SSE payload a client receives for one stream of `chunks` events."""
    return sum(len(e) for e in stream_events(chunks))


_COMPLETION = completion_body()
_JSON_REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(_COMPLETION) + _COMPLETION
)
_ERROR = json.dumps({"error": {"code": 500, "message": "bench upstream fails on purpose", "metadata": {}}}).encode()
_ERROR_REPLY = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(_ERROR) + _ERROR
)
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"X-Generation-Id: gen-bench\r\nTransfer-Encoding: chunked\r\n\r\n"
)
_EVENTS: dict[int, list[bytes]] = {}
_MAX_HEAD = 64 * 1024


def _chunked(events: list[bytes]) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(e), e) for e in events]


class _Conn(asyncio.Protocol):
    def __init__(self, tasks: set[asyncio.Task[None]]) -> None:
        self._tasks = tasks
        self._buf = bytearray()
        self._head: dict[str, str] | None = None
        self._need = 0
        self._busy = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._head is not None and self._need and not self._buf:
            # Body bytes of a request already parsed: count them, keep nothing.
            take = min(len(data), self._need)
            self._need -= take
            data = data[take:]
        self._buf += data
        self._process()

    def _process(self) -> None:
        while not self._busy and self._transport is not None:
            if self._head is None:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > _MAX_HEAD:
                        self._transport.close()
                    return
                self._head = _parse_head(bytes(self._buf[:end]))
                del self._buf[: end + 4]
                if "transfer-encoding" in self._head:
                    self._transport.write(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    self._transport.close()
                    return
                self._need = int(self._head.get("content-length", "0"))
            if self._need:
                take = min(len(self._buf), self._need)
                del self._buf[:take]
                self._need -= take
                if self._need:
                    return
            parsed, self._head = self._head, None
            self._respond(parsed)

    def _respond(self, head: dict[str, str]) -> None:
        assert self._transport is not None
        fail = head.get("x-bench-fail", "")
        if fail == "500":
            self._transport.write(_ERROR_REPLY)
            return
        chunks = head.get("x-bench-chunks")
        if chunks is None:
            self._transport.write(_JSON_REPLY)
            return
        n = int(chunks)
        events = _EVENTS.get(n)
        if events is None:
            events = _EVENTS[n] = _chunked(stream_events(n))
        delay = float(head.get("x-bench-delay-ms", "0")) / 1000
        if delay <= 0 and fail != "drop":
            self._transport.write(_SSE_HEAD + b"".join(events) + b"0\r\n\r\n")
            return
        self._busy = True
        task = asyncio.get_running_loop().create_task(self._stream(events, delay, fail == "drop"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stream(self, events: list[bytes], delay: float, drop: bool) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(_SSE_HEAD)
        for index, event in enumerate(events):
            if delay > 0:
                await asyncio.sleep(delay)
            if transport.is_closing():
                return
            if drop and index == 3:
                transport.abort()
                return
            transport.write(event)
        transport.write(b"0\r\n\r\n")
        self._busy = False
        self._process()


def _parse_head(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {"": lines[0]}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


async def serve(host: str, port: int, ready: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    server = await loop.create_server(lambda: _Conn(tasks), host, port, backlog=4096, reuse_address=True)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    for task in list(tasks):
        task.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("bench upstream: loopback only", file=sys.stderr)
        return 2
    run(serve(args.host, args.port), uvloop=not args.no_uvloop)
    return 0


def run(coro: Any, uvloop: bool) -> None:
    if uvloop:
        try:
            import uvloop as _uvloop
        except ImportError:
            pass
        else:
            _uvloop.run(coro)
            return
    asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())
