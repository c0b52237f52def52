"""Where the proxy listens and who may read /metrics: loopback by default, a token off loopback,
/metrics on its own port when asked, and a clear warning when the proxy itself is exposed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import parse_config
from proxy.errors import ConfigError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(tmp_path: Path, config: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    path = tmp_path / "proxy.yaml"
    path.write_text(config)
    return subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=Path(__file__).parent.parent,
    )


def _wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"proxy exited: {proc.stdout.read() if proc.stdout else ''}")
        with socket.socket() as sock:
            # A connect to a port nobody listens on yet can succeed by connecting to itself (the
            # kernel may pick that very port as the source: TCP simultaneous open): not the proxy.
            if sock.connect_ex(("127.0.0.1", port)) == 0 and sock.getsockname()[1] != port:
                return
        time.sleep(0.05)
    raise AssertionError("proxy never listened")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    return out


def test_default_bind_is_loopback() -> None:
    assert parse_config({}).host == "127.0.0.1"


def test_metrics_off_loopback_needs_a_token(tmp_path: Path) -> None:
    port = _free_port()
    proc = _serve(tmp_path, f"host: 0.0.0.0\nport: {port}\ndb: {tmp_path / 'u.db'}\ncatalog: {{refresh_hours: 0}}\n")
    out = proc.communicate(timeout=20)[0]
    assert proc.returncode == 2
    assert out.strip().splitlines() == [
        "openrouter-spend: metrics.token_env: required when /metrics is served on a non-loopback address (0.0.0.0)"
    ]


async def test_metrics_on_their_own_port_behind_a_token(tmp_path: Path) -> None:
    port, metrics_port = _free_port(), _free_port()
    config = (
        f"port: {port}\ndb: {tmp_path / 'u.db'}\ncatalog: {{refresh_hours: 0}}\n"
        f"metrics: {{port: {metrics_port}, token_env: TEST_METRICS_TOKEN}}\n"
    )
    proc = _serve(tmp_path, config, {"TEST_METRICS_TOKEN": "s3cret-token"})
    try:
        _wait_listening(metrics_port, proc)
        _wait_listening(port, proc)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                assert response.status == 401
                assert (await response.json())["error"]["code"] == 401
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics", headers={"Authorization": "Bearer s3cret-token"}) as response:
                assert response.status == 200
                assert "openrouter_proxy_build_info" in await response.text()
            # Not on the proxy's own port: that one only forwards.
            async with session.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer s3cret-token"}) as response:
                assert response.status == 404
    finally:
        out = _stop(proc)
    assert "s3cret-token" not in out


async def test_exposed_proxy_without_proxy_keys_warns(tmp_path: Path) -> None:
    port = _free_port()
    config = f"host: 0.0.0.0\nport: {port}\ndb: {tmp_path / 'u.db'}\ncatalog: {{refresh_hours: 0}}\nmetrics: {{token_env: TEST_METRICS_TOKEN}}\n"
    proc = _serve(tmp_path, config, {"TEST_METRICS_TOKEN": "t"})
    try:
        _wait_listening(port, proc)
    finally:
        out = _stop(proc)
    assert "event=exposed host=0.0.0.0" in out
    assert "bind 127.0.0.1 unless that is what you want" in out


@pytest.mark.parametrize("raw", [{"metrics": {"token_env": "NOT_SET_ANYWHERE_X"}}])
def test_named_token_variable_must_be_set(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.server.app import create_app

    monkeypatch.delenv("NOT_SET_ANYWHERE_X", raising=False)
    with pytest.raises(ConfigError, match="^metrics.token_env: environment variable NOT_SET_ANYWHERE_X is not set"):
        create_app(parse_config(raw))


@pytest.mark.parametrize(
    ("extra", "env", "warns"),
    [
        ("keys: [{alias: laptop, fingerprint: 3f9a0c1d2e4b5a6c}]\n", {}, True),  # a name is not protection
        (
            "managed_key_env: TEST_UPSTREAM_KEY\nkeys: [{alias: a, key_sha256: '" + "ab" * 32 + "'}]\n",
            {"TEST_UPSTREAM_KEY": "sk-or-v1-x"},
            False,
        ),
    ],
)
async def test_exposure_warning_depends_on_proxy_keys_not_names(tmp_path: Path, extra: str, env: dict[str, str], warns: bool) -> None:
    port = _free_port()
    config = (
        f"host: 0.0.0.0\nport: {port}\ndb: {tmp_path / 'u.db'}\ncatalog: {{refresh_hours: 0}}\n"
        "metrics: {token_env: TEST_METRICS_TOKEN}\n" + extra
    )
    proc = _serve(tmp_path, config, {"TEST_METRICS_TOKEN": "t", **env})
    try:
        _wait_listening(port, proc)
    finally:
        out = _stop(proc)
    assert ("event=exposed" in out) is warns, out


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("db: /proc/no/such/dir/u.db\n", "openrouter-spend: db: cannot open /proc/no/such/dir/u.db: "),
        ("catalog: {file: /no/such/listing.json}\n", "openrouter-spend: catalog.file: cannot read /no/such/listing.json: "),
    ],
)
def test_start_up_failures_are_one_line_and_exit_2(tmp_path: Path, config: str, expected: str) -> None:
    port = _free_port()
    proc = _serve(tmp_path, f"port: {port}\n" + config)
    out = proc.communicate(timeout=20)[0]
    assert proc.returncode == 2, out
    assert len(out.strip().splitlines()) == 1 and out.startswith(expected), out


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _serve(tmp_path, f"port: {port}\ndb: {tmp_path / 'u.db'}\ncatalog: {{refresh_hours: 0}}\n")
        out = proc.communicate(timeout=20)[0]
    assert proc.returncode == 2, out
    assert out.strip().splitlines()[-1].startswith(f"openrouter-spend: port: cannot listen on 127.0.0.1:{port}: ")
    assert "Traceback" not in out and "event=listening" not in out
