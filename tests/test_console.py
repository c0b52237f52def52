"""What `serve` prints: a banner with the URLs to paste, one access line per request (never a key),
`--quiet`, and warnings that would repeat on every request held to one a minute."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from proxy.server.throttle import Throttle

ROOT = Path(__file__).parent.parent
KEY = "sk-or-v1-test-" + "ef" * 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _serve_and_call(tmp_path: Path, upstream: Any, *extra: str, config: str = "") -> str:
    port = _free_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(f"port: {port}\ndb: {tmp_path / 'u.db'}\nupstream: {upstream.make_url('/api/v1')}\n"
                    f"catalog: {{refresh_hours: 0}}\n{config}")
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(path), *extra],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if proc.poll() is not None:
                    raise AssertionError(log.read_text())
                await asyncio.sleep(0.05)
        async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/api/v1", api_key=KEY, max_retries=0) as client:
            await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}])
        await asyncio.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 20)
    return log.read_text()


async def test_banner_and_one_access_line_per_request(tmp_path: Path, upstream: Any) -> None:
    out = await _serve_and_call(tmp_path, upstream)
    port = re.search(r"listening on http://127.0.0.1:(\d+)", out)
    assert port, out
    base = f"http://127.0.0.1:{port.group(1)}"
    assert f"{base}/api/v1" in out and f"{base}/api " in out  # OpenAI-style and Anthropic-style
    assert f"database:                {tmp_path / 'u.db'}" in out
    assert f"config:                  {tmp_path / 'proxy.yaml'}" in out
    assert f"metrics:                 {base}/metrics" in out
    access = [line for line in out.splitlines() if " proxy.access " in line]
    assert len(access) == 1, out
    assert re.search(r"POST /chat/completions openai/gpt-4o 200 \d+\+\d+tok \$0\.\d{6} \d+ms$", access[0]), access[0]
    assert KEY not in out and KEY[-12:] not in out


async def test_quiet_and_access_log_false(tmp_path: Path, upstream: Any) -> None:
    quiet = await _serve_and_call(tmp_path, upstream, "--quiet")
    assert "listening on" not in quiet and " proxy.access " not in quiet
    assert "event=listening" in quiet  # the log line stays for log collectors
    (tmp_path / "u.db").unlink()
    configured = await _serve_and_call(tmp_path, upstream, config="access_log: false\n")
    assert "listening on" in configured and " proxy.access " not in configured


def test_repeated_warnings_are_held_to_one_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = logging.getLogger("test.throttle")
    throttle = Throttle(log, interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        assert throttle.warning("gpt", "event=cost_drift model=%s", "gpt")
        for _ in range(5):
            now[0] += 1
            assert not throttle.warning("gpt", "event=cost_drift model=%s", "gpt")
        assert throttle.warning("other", "event=cost_drift model=%s", "other")
        now[0] = 61
        assert throttle.warning("gpt", "event=cost_drift model=%s", "gpt")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["event=cost_drift model=gpt", "event=cost_drift model=other", "event=cost_drift model=gpt repeated=5 in_last_s=61"]


async def test_cost_drift_on_every_request_logs_once(proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="proxy.server.forward")
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            async with session.post(f"{proxy.base}/chat/completions", json={"model": "openai/gpt-4o", "messages": []},
                                    headers={"Authorization": f"Bearer {KEY}", "X-Fake-Cost": "0.006325"}) as resp:
                assert resp.status == 200
                await resp.read()
    await proxy.settle()
    drift = [r.getMessage() for r in caplog.records if "event=cost_drift" in r.getMessage()]
    assert len(drift) == 1, drift
    assert len(proxy.rows()) == 4


def test_access_log_key_is_checked() -> None:
    from proxy.config import parse_config
    from proxy.errors import ConfigError

    assert parse_config({}).access_log is True and parse_config({"access_log": False}).access_log is False
    with pytest.raises(ConfigError, match="access_log: expected true or false, got 'no'"):
        parse_config({"access_log": "no"})
