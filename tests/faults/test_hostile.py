"""Hostile clients (issue 11): bytes /metrics cannot decode, Host names a DNS-rebinding page would send,
and, further down, bodies that stall or pile up."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from proxy.config import MetricsConfig
from tests.faults.conftest import CHAT, KEY
from tests.faults.test_bad_input import raw, request, status_of

AUTH = {"Authorization": f"Bearer {KEY}"}


async def test_metrics_with_a_non_utf8_authorization_is_401_not_500(
    start_proxy: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_METRICS_TOKEN", "t0ken")
    proxy = await start_proxy(make_config(metrics=MetricsConfig(token_env="TEST_METRICS_TOKEN")))
    port = proxy.server.port
    for value in (b"Bearer \xff\xfe", b"\xc3\x28", b"Bearer t0ken\xe9"):
        sent = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: " + value + b"\r\n\r\n"
        answer = await raw(port, sent)
        assert status_of(answer) == 401, answer[:300]
        assert b"Traceback" not in answer
    ok = await raw(port, request("GET", "/metrics", {"Authorization": "Bearer t0ken"}, host="127.0.0.1"))
    assert status_of(ok) == 200


@pytest.mark.parametrize("path", ["/metrics", "/healthz"])
async def test_own_pages_answer_only_loopback_or_configured_host_names(start_proxy: Any, make_config: Any, path: str) -> None:
    # A DNS-rebinding page at evil.example resolves its own name to 127.0.0.1: the browser then
    # sends `Host: evil.example:8787`, which is how the proxy can tell it from a local client.
    proxy = await start_proxy(make_config(allowed_hosts=("spend.internal",)))
    port = proxy.server.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "localhost.evil.example", ""):
        answer = await raw(port, request("GET", path, host=host))
        assert status_of(answer) in (400, 403), (host, answer[:200])
        assert b"openrouter_proxy_" not in answer and b"catalog_models" not in answer
    for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}", "[::1]", f"[::1]:{port}", "SPEND.internal:80"):
        answer = await raw(port, request("GET", path, host=host))
        assert status_of(answer) == 200, (host, answer[:200])


async def test_a_metrics_token_lifts_the_host_check(start_proxy: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_METRICS_TOKEN", "t0ken")
    proxy = await start_proxy(make_config(metrics=MetricsConfig(token_env="TEST_METRICS_TOKEN")))
    answer = await raw(proxy.server.port, request("GET", "/metrics", {"Authorization": "Bearer t0ken"}, host="grafana.example"))
    assert status_of(answer) == 200


async def test_api_paths_keep_working_for_loopback_host_names(proxy: Any, upstream: Any) -> None:
    port = proxy.server.port
    body = json.dumps(CHAT).encode()
    for host in ("localhost", f"127.0.0.1:{port}", f"[::1]:{port}"):
        answer = await raw(port, request("POST", "/api/v1/chat/completions", {**AUTH, "Content-Type": "application/json"}, body, host=host))
        assert status_of(answer) == 200, (host, answer[:200])
