"""The floor: a bare aiohttp forwarder with no parsing, logging or accounting, and one pooled ClientSession.

It does what any proxy must (hop-by-hop headers out, body through, stream back chunk by chunk), so
the proxy's cost above it is the cost of accounting.

    python -m bench.passthrough --port 9002 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)

_HOP = frozenset(
    ("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "host", "content-length")
)


def _clean(headers: Mapping[str, str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in _HOP:
            out.add(name, value)
    return out


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[SESSION]
    async with session.request(
        request.method,
        request.app[UPSTREAM] + request.raw_path,
        data=body or None,
        headers=_clean(request.headers),
        allow_redirects=False,
    ) as upstream:
        headers = _clean(upstream.headers)
        streamed = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
        if not streamed and upstream.content_length is not None:
            return web.Response(status=upstream.status, headers=headers, body=await upstream.read())
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def _session(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=900)
    app[SESSION] = aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0), auto_decompress=False, skip_auto_headers=("User-Agent",)
    )
    yield
    await app[SESSION].close()


def create_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bare aiohttp passthrough (the benchmark's floor)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9001")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (the proxy runs on the default loop)")
    args = parser.parse_args(argv)
    loop = None
    if args.uvloop:
        import asyncio

        import uvloop

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
    web.run_app(create_app(args.upstream), host=args.host, port=args.port, access_log=None, print=None, loop=loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
