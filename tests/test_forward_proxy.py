"""Behind a corporate proxy: the upstream connection goes through HTTP(S)_PROXY and honours
NO_PROXY, tested through a small forward proxy on loopback."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

KEY = "sk-or-v1-test-" + "12" * 20


def forward_proxy_app(seen: list[str]) -> web.Application:
    """An absolute-URI HTTP forward proxy (what HTTP_PROXY names for http:// targets)."""

    async def relay(request: web.Request) -> web.StreamResponse:
        target = str(request.url)  # the request line's absolute URI (its Host header carries the port)
        seen.append(f"{request.method} {target}")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "proxy-connection", "content-length")}
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.request(request.method, target, headers=headers,
                                       data=await request.read()) as upstream:
                body = await upstream.read()
                drop = ("content-length", "transfer-encoding", "connection")
                return web.Response(status=upstream.status, body=body,
                                    headers={k: v for k, v in upstream.headers.items() if k.lower() not in drop})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


async def _ask(proxy: Any) -> Any:
    # The test's own client talks to our proxy directly: trust_env off (the SDKs would honour the variable too).
    async with aiohttp.ClientSession(trust_env=False) as session:
        async with session.post(f"{proxy.base}/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                                json={"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
async def test_upstream_goes_through_the_environment_proxy(
    aiohttp_server: Any, start_proxy: Any, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    seen: list[str] = []
    forward = await aiohttp_server(forward_proxy_app(seen))
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(forward.make_url("/")))
    proxy = await start_proxy()
    reply = await _ask(proxy)
    assert reply["usage"]["cost"] is not None
    assert any(s.startswith("POST ") and s.endswith("/api/v1/chat/completions") for s in seen), seen
    await proxy.settle()
    [row] = proxy.rows()
    assert row["status"] == 200 and row["cost_usd"] is not None


async def test_no_proxy_bypasses_it(aiohttp_server: Any, start_proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    forward = await aiohttp_server(forward_proxy_app(seen))
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "ALL_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", str(forward.make_url("/")))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    proxy = await start_proxy()
    await _ask(proxy)
    assert seen == []
