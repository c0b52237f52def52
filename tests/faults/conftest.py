"""Fault-suite fixtures: the proxy (and the fake upstream) as real subprocesses, with /proc readings.

In-process tests use `start_proxy` from tests/conftest.py; these are for what only a real process
shows: signals, RSS, open file descriptors and many hundreds of sockets.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-or-v1-" + "0123456789abcdef" * 4
CHAT = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_rows(db: Path, where: str = "") -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM requests {where} ORDER BY started_at")]
    finally:
        conn.close()


def metric_value(text: str, name: str) -> float:
    """Sum of every sample of `name` (all label sets) in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout} s")


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    async def wait_ready(self, path: str, timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        async with aiohttp.ClientSession() as session:
            while loop.time() < end:
                if self.proc.poll() is not None:
                    raise AssertionError(f"process exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
                try:
                    async with session.get(self.url(path)) as response:
                        if response.status < 500:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"not ready within {timeout} s:\n{self.log_text()[-3000:]}")

    async def wait_exit(self, timeout: float) -> int:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.proc.poll() is None:
            if loop.time() > end:
                raise AssertionError(f"process still running after {timeout} s")
            await asyncio.sleep(0.05)
        return self.proc.returncode


@dataclass
class ProxyProcess(Process):
    db: Path
    config_path: Path

    @property
    def base(self) -> str:
        return self.url("/api/v1")

    async def metrics_text(self) -> str:
        async with aiohttp.ClientSession() as session:
            async with session.get(self.url("/metrics")) as response:
                return await response.text()


class _Started:
    """Every process a test started; each is stopped by its own pid at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def started() -> Any:
    registry = _Started()
    yield registry
    registry.stop_all()


SpawnProxy = Callable[..., Awaitable[ProxyProcess]]


@pytest.fixture
def spawn_proxy(tmp_path: Path, started: _Started) -> SpawnProxy:
    count = 0

    async def spawn(upstream: str, db: Path | None = None, env: dict[str, str] | None = None, **config: Any) -> ProxyProcess:
        nonlocal count
        count += 1
        port = free_port()
        db = db or tmp_path / "proxy.db"
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "upstream": upstream,
            "db": str(db),
            "catalog": {"refresh_hours": 0},
            **config,
        }
        config_path = tmp_path / f"proxy-{count}.yaml"
        config_path.write_text(yaml.safe_dump(settings))
        log_path = tmp_path / f"proxy-{count}.log"
        proc = started.start([sys.executable, "-m", "proxy", "serve", "--config", str(config_path)], log_path, env)
        process = ProxyProcess(proc=proc, port=port, log_path=log_path, db=db, config_path=config_path)
        await process.wait_ready("/healthz")
        return process

    return spawn


@pytest.fixture
async def fake_process(tmp_path: Path, started: _Started) -> AsyncIterator[Process]:
    """The fake upstream in its own process, so the test's event loop only drives clients."""
    port = free_port()
    proc = started.start([sys.executable, "-m", "tests.fake_openrouter", str(port)], tmp_path / "fake.log")
    process = Process(proc=proc, port=port, log_path=tmp_path / "fake.log")
    await process.wait_ready("/api/v1/models")
    yield process


async def streams_until_spent(bases: list[str], model: str, clients: int = 60) -> list[str]:
    """`clients` streams, client c on bases[c % len(bases)], each sending $0.05 streams until its
    budget says spent: the outcome of every call ("ok", "held" for a 402 while reservations are in
    flight, "spent"). A new connection per call, so workers sharing one port (SO_REUSEPORT) share
    the calls too."""
    outcomes: list[str] = []
    headers = {"Authorization": f"Bearer {KEY}", "X-Fake-Cost": "0.05", "X-Fake-Chunks": "5", "X-Fake-Delay-Ms": "40"}
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}

    async def client(session: aiohttp.ClientSession, base: str) -> None:
        for _ in range(300):  # bounded: until the budget says spent
            async with session.post(f"{base}/chat/completions", json=body, headers=headers) as response:
                if response.status == 200:
                    await response.read()
                    outcomes.append("ok")
                    continue
                assert response.status == 402, await response.text()
                message = (await response.json())["error"]["message"]
                if "is spent" in message:
                    outcomes.append("spent")
                    return
                assert "in flight" in message, message
                outcomes.append("held")
            await asyncio.sleep(0.05)
        raise AssertionError("budget never reported spent")

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, bases[c % len(bases)]) for c in range(clients)))
    return outcomes
