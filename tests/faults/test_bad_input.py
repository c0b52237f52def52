"""Bad input: oversized bodies, malformed JSON, hostile headers and values, and paths that try to leave the upstream."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web

from tests.faults.conftest import CHAT, KEY
from tests.fake_openrouter import RECEIVED

AUTH = {"Authorization": f"Bearer {KEY}"}
SAFE = re.compile(r"^[A-Za-z0-9._:@/+=-]+$")


async def raw(port: int, data: bytes, *, chunks: list[bytes] | None = None, timeout: float = 5.0) -> bytes:
    """Send bytes as they are (no client library tidies them), then read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        for chunk in chunks or []:
            try:
                writer.write(chunk)
                await writer.drain()
            except ConnectionError:
                break
        out = b""
        async with asyncio.timeout(timeout):
            while piece := await reader.read(65536):
                out += piece
                if b"\r\n\r\n" in out and _complete(out):
                    break
        return out
    except ConnectionError:
        return b""
    finally:
        writer.close()


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    return match is not None and len(body) >= int(match.group(1))


def status_of(response: bytes) -> int:
    assert re.match(rb"HTTP/1\.[01] ", response), response[:200]
    return int(response[9:12])


def request(method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"", host: str = "proxy") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def test_declared_body_over_the_limit_is_refused_before_reading(proxy: Any, upstream: Any) -> None:
    head = request("POST", "/api/v1/chat/completions", {**AUTH, "Content-Type": "application/json", "Content-Length": str(100 * 1024 * 1024)})
    started = time.monotonic()
    response = await raw(proxy.server.port, head, chunks=[b"x" * 4096], timeout=3)
    assert time.monotonic() - started < 2
    assert status_of(response) == 413
    assert json.loads(response.partition(b"\r\n\r\n")[2])["error"]["code"] == 413
    assert upstream.app[RECEIVED] == []


async def test_chunked_body_over_the_limit_is_refused(start_proxy: Any, make_config: Any, upstream: Any) -> None:
    proxy = await start_proxy(make_config(max_body_bytes=1024 * 1024))
    head = (
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: p\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        + f"Authorization: Bearer {KEY}\r\n\r\n".encode()
    )
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    response = await raw(proxy.server.port, head, chunks=[chunk] * 40, timeout=5)
    assert status_of(response) == 413
    assert upstream.app[RECEIVED] == []


@pytest.mark.parametrize("body", [b'{"model": "openai/gpt-4o", "messages": [', b"\xff\xfe not json at all", b'{"a": 1}}'])
async def test_malformed_json_is_forwarded_as_is_and_the_upstream_error_returned(
    proxy: Any, upstream: Any, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = await proxy.client.post(
        "/api/v1/chat/completions", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status == 400
    assert await response.json() == {"error": {"code": 400, "message": "fake upstream: body is not valid JSON"}}
    [seen] = upstream.app[RECEIVED]
    assert seen["body"] == body
    await proxy.settle()
    [row] = proxy.rows()
    assert (row["status"], row["outcome"], row["error"]) == (400, "upstream_error", "http_400")
    assert any("status=400" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


async def test_non_utf8_and_huge_headers_do_not_crash(proxy: Any) -> None:
    port = proxy.server.port
    body = json.dumps(CHAT).encode()
    odd = (
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: p\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\n".encode()
        + b"X-Spend-Session: caf\xe9\xff\xfe\x80-s\r\nX-Title: \xc3\x28 bad utf8\r\nX-Spend-Project: \xf0\x9f\x92\xb8\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    response = await raw(port, odd)
    assert status_of(response) == 200
    # Control characters are refused by the HTTP parser itself.
    control = odd.replace(b"X-Spend-Project: \xf0\x9f\x92\xb8", b"X-Spend-Project: \x01\x02\x7f")
    assert status_of(await raw(port, control)) == 400
    for huge in (
        request("POST", "/api/v1/chat/completions", {**AUTH, "X-Spend-Session": "s" * 100_000}, body),
        request("POST", "/api/v1/chat/completions", {**AUTH, **{f"X-H{i}": "v" * 100 for i in range(2000)}}, body),
        request("GET", "/api/v1/" + "a" * 100_000),
    ):
        answer = await raw(port, huge)
        assert answer == b"" or status_of(answer) < 500
    # Still serving.
    response2 = await proxy.client.post("/api/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response2.status == 200
    await proxy.settle()
    for row in proxy.rows():
        for column in ("session", "project", "client"):
            assert row[column] is None or SAFE.match(row[column]), (column, row[column])


async def test_session_and_project_values_are_capped_and_sanitised(proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    nasty = [
        ("/p/evil%0Dinjected%22x%3D1%09%20/api/v1/chat/completions", {"X-Spend-Session": 'a"b\'c\\d{}' + "z" * 5000}),
        ("/api/v1/chat/completions", {"X-Spend-Project": "p" * 8000, "X-Claude-Code-Session-Id": "\t<script>\"}\\"}),
        ("/api/v1/chat/completions", {"X-Spend-Project": 'q"} 1\nfake_metric 9', "X-Spend-Session": "ok-session"}),
    ]
    for path, headers in nasty:
        lines = [f"POST {path} HTTP/1.1", "Host: p", "Connection: close", "Content-Type: application/json", f"Authorization: Bearer {KEY}"]
        # A raw newline would end the header; send what survives the wire: \n becomes a space-folded tail.
        lines += [f"{k}: {v.replace(chr(10), ' ')}" for k, v in headers.items()]
        body = json.dumps({**CHAT, "stream": True}).encode()
        lines.append(f"Content-Length: {len(body)}")
        response = await raw(proxy.server.port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        assert status_of(response) == 200
    await proxy.settle()
    rows = proxy.rows()
    assert len(rows) == len(nasty)
    for row in rows:
        assert row["project"] is None or (SAFE.match(row["project"]) and len(row["project"]) <= 64), row["project"]
        assert row["session"] is None or (SAFE.match(row["session"]) and len(row["session"]) <= 128), row["session"]
    assert rows[0]["project"] == "evil_injected_x=1"
    metrics = await proxy.metrics_text()
    for line in metrics.splitlines():
        if line.startswith("#"):
            continue
        assert re.fullmatch(r'[a-z_:]+(\{([a-z_]+="[^"\\\n]*",?)*\})? \S+', line), line
    assert not any(line.startswith("fake_metric") for line in metrics.splitlines())
    text = "\n".join(r.getMessage() for r in caplog.records)
    for marker in ('injected"', "<script>", 'q"}', "\r"):
        assert marker not in text


@pytest.fixture
async def evil(aiohttp_server: Any) -> Any:
    hits: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        return web.Response(text="evil")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    server = await aiohttp_server(app)
    server.hits = hits
    return server


async def test_no_path_host_or_target_reaches_another_host(proxy: Any, upstream: Any, evil: Any) -> None:
    elsewhere = f"127.0.0.1:{evil.port}"
    targets = [
        ("GET", f"http://{elsewhere}/api/v1/models", "proxy"),
        ("GET", f"http://{elsewhere}/", "proxy"),
        ("GET", "http://evil.example/api/v1/models", "evil.example"),
        ("GET", "/api/v1/../../../etc/passwd", "proxy"),
        ("GET", "/api/v1/%2e%2e/%2e%2e/x", "proxy"),
        ("GET", "/api/v1/..%2f..%2fx", "proxy"),
        ("GET", "/api/v1/%2E%2E%5C%2E%2E%5Cx", "proxy"),
        ("GET", f"/api/v1/%2F%2F{elsewhere}/x", "proxy"),
        ("GET", f"/api/v1/@{elsewhere}/x", "proxy"),
        ("GET", f"//{elsewhere}/api/v1/models", "proxy"),
        ("GET", f"/api/v1/models?next=http://{elsewhere}/", "proxy"),
        ("GET", "/api/v1/models", elsewhere),
        ("POST", "/api/v1/chat/completions", elsewhere),
        ("CONNECT", f"{elsewhere}", elsewhere),
        ("GET", f"/p/x/..%2F..%2F{elsewhere}/api/v1/models", "proxy"),
        ("OPTIONS", "*", "proxy"),
    ]
    for method, target, host in targets:
        body = json.dumps(CHAT).encode() if method == "POST" else b""
        response = await raw(proxy.server.port, request(method, target, {**AUTH, "Content-Type": "application/json"}, body, host=host))
        assert response == b"" or status_of(response) < 500, (target, response[:300])
    assert evil.hits == []
    up_host = f"{upstream.host}:{upstream.port}"
    for seen in upstream.app[RECEIVED]:
        assert seen["path"].startswith("/api/v1/"), seen["path"]
        assert ".." not in unquote(seen["path"]).split("?")[0].replace("\\", "/").split("/")
        assert seen["headers"].get("Host") == up_host
