"""Behind a corporate proxy: the upstream connection goes through HTTP(S)_PROXY and honours
NO_PROXY, tested through small forward proxies on loopback: one relaying plain HTTP, one tunnelling
HTTPS with CONNECT to a TLS upstream whose certificate a throwaway private CA signed."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fake_openrouter import fake_app

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


# HTTPS upstream through a CONNECT proxy: a fake upstream on TLS with a throwaway CA made here.

PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")


@dataclass
class Tls:
    ca: Path  # the throwaway CA's certificate (PEM): what a user would trust
    server: ssl.SSLContext  # the fake upstream's side, a certificate for 127.0.0.1/localhost signed by it


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a throwaway CA (Debian package openssl)")
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test corporate root",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "ext.cnf", "-out", "server.pem")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(d / "server.pem", d / "server.key")
    return Tls(ca=d / "ca.pem", server=server)


class ConnectProxy:
    """A forward proxy that only tunnels (CONNECT host:port), as corporate proxies do for https://."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_writer = None
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target, _version = head.split(b"\r\n", 1)[0].decode().split(" ")
            self.seen.append(f"{method} {target}")
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            pass
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    w.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        if writer.can_write_eof():
            try:
                writer.write_eof()
            except OSError:
                pass


@pytest.fixture
async def connect_proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ConnectProxy]:
    for name in PROXY_VARIABLES + ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    forward = ConnectProxy()
    await forward.start()
    yield forward
    await forward.close()


@pytest.fixture
async def tls_upstream(aiohttp_server: Any, tls: Tls) -> Any:
    return await aiohttp_server(fake_app(), ssl=tls.server)


async def test_https_upstream_through_a_connect_proxy_with_the_ca_file_key(
    tls: Tls, tls_upstream: Any, connect_proxy: ConnectProxy, start_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", connect_proxy.url)
    upstream = str(tls_upstream.make_url("/api/v1"))
    assert upstream.startswith("https://127.0.0.1:")
    proxy = await start_proxy(upstream=upstream, upstream_ca_file=tls.ca)
    reply = await _ask(proxy)
    assert reply["usage"]["cost"] is not None
    assert connect_proxy.seen == [f"CONNECT 127.0.0.1:{tls_upstream.port}"]
    await proxy.settle()
    [row] = proxy.rows()
    assert row["status"] == 200 and row["cost_usd"] is not None


async def test_ssl_cert_file_is_honoured_as_openssl_documents_it(
    tls: Tls, tls_upstream: Any, connect_proxy: ConnectProxy, start_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set after aiohttp was imported, before the proxy starts: as a user's shell sets it before `serve`.
    monkeypatch.setenv("HTTPS_PROXY", connect_proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca))
    proxy = await start_proxy(upstream=str(tls_upstream.make_url("/api/v1")))
    await _ask(proxy)
    assert connect_proxy.seen == [f"CONNECT 127.0.0.1:{tls_upstream.port}"]


async def test_no_proxy_bypasses_the_connect_proxy(
    tls: Tls, tls_upstream: Any, connect_proxy: ConnectProxy, start_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", connect_proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    proxy = await start_proxy(upstream=str(tls_upstream.make_url("/api/v1")), upstream_ca_file=tls.ca)
    reply = await _ask(proxy)
    assert reply["usage"]["cost"] is not None
    assert connect_proxy.seen == []


async def test_an_untrusted_upstream_certificate_is_a_502_not_a_silent_pass(
    tls_upstream: Any, connect_proxy: ConnectProxy, start_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", connect_proxy.url)
    proxy = await start_proxy(upstream=str(tls_upstream.make_url("/api/v1")))
    async with aiohttp.ClientSession(trust_env=False) as session, session.post(
        f"{proxy.base}/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "openai/gpt-4o", "messages": []},
    ) as resp:
        assert resp.status == 502, await resp.text()
        body = await resp.json()
    assert "certificate" in body["error"]["message"].lower(), body
    assert connect_proxy.seen == [f"CONNECT 127.0.0.1:{tls_upstream.port}"]


def test_a_missing_ca_file_is_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"upstream_ca_file: {tmp_path / 'nope.pem'}\n")
    done = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(config)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("openrouter-spend: upstream_ca_file: cannot read "), done.stderr
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    config.write_text(f"upstream_ca_file: {bad}\n")
    done = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(config)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stderr.startswith(f"openrouter-spend: upstream_ca_file: {bad} holds no PEM"), done.stderr
