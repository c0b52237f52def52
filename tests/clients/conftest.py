"""Real coding agents (installed by scripts/install_agents.sh into .agents/) run against the fake upstream.

The fake runs in the test's event loop on a real loopback port, the proxy is the real `python -m
proxy serve` subprocess, and each agent is its own subprocess with a throwaway HOME, an environment
holding nothing of the caller's, and every phone-home switch that CLIENTS.md lists turned off.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.fake_openrouter import RECEIVED, fake_app

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / ".agents"
BINARIES = {
    "claude": AGENTS / "node_modules" / ".bin" / "claude",
    "codex": AGENTS / "node_modules" / ".bin" / "codex",
    "opencode": AGENTS / "node_modules" / ".bin" / "opencode",
    "aider": AGENTS / "aider" / "bin" / "aider",
}
KEY = "sk-or-v1-agents-" + "5a" * 24
# An agent answering the fake takes 1-10 s; a stuck one is killed well inside the test's own timeout
# (set in test_agents.py), so the direct run that names the culprit still has time.
AGENT_TIMEOUT_S = 60.0


def agent_binary(name: str) -> Path:
    """The agent's executable; skips loudly when it is not installed (fails instead in CI with OPENROUTER_SPEND_AGENTS=1)."""
    path = BINARIES[name]
    if path.exists():
        return path
    hint = "scripts/install_agents.sh --aider" if name == "aider" else "scripts/install_agents.sh"
    msg = f"{name} is not installed at {path.relative_to(ROOT)}: run `{hint}` to test it through the proxy"
    if os.environ.get("CI") and os.environ.get("OPENROUTER_SPEND_AGENTS") == "1":
        pytest.fail(msg + " (CI and OPENROUTER_SPEND_AGENTS=1 are set, so this cannot be skipped)")
    pytest.skip("NOT RUN: " + msg)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(home: Path) -> dict[str, str]:
    """Only what an agent needs to start: nothing of the caller's keys, base URLs or proxies leaks in."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


@dataclass(frozen=True, slots=True)
class AgentRun:
    returncode: int | None  # None: killed after the timeout
    stdout: str
    stderr: str

    def explain(self) -> str:
        status = "killed after timeout" if self.returncode is None else f"exit {self.returncode}"
        return f"{status}\n--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"


async def run_agent(argv: list[str | Path], env: dict[str, str], cwd: Path, timeout: float = AGENT_TIMEOUT_S) -> AgentRun:
    """Runs the agent in its own process group with no stdin; on timeout the whole group is killed."""
    cwd.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    returncode: int | None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        returncode = proc.returncode
    except asyncio.TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = await proc.communicate()
        returncode = None
    return AgentRun(returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@dataclass
class Stack:
    """The fake upstream (in-process) and the proxy (a `serve` subprocess) in front of it."""

    fake: TestServer
    proxy: subprocess.Popen[bytes]
    port: int
    db: Path
    log: Path

    @property
    def fake_base(self) -> str:
        return str(self.fake.make_url("/api/v1"))

    @property
    def proxy_root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self) -> list[dict[str, Any]]:
        """What reached the fake upstream: path, headers, body bytes, method."""
        received = self.fake.app[RECEIVED]
        return list(received)

    async def stop_proxy(self) -> None:
        """SIGTERM, as a user's Ctrl-C: the proxy drains its queue, so every row is in SQLite afterwards."""
        if self.proxy.poll() is None:
            self.proxy.send_signal(signal.SIGTERM)
        for _ in range(300):
            if self.proxy.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            self.proxy.kill()
            raise AssertionError("proxy did not exit within 15 s of SIGTERM")
        assert self.proxy.returncode == 0, self.log.read_text(errors="replace")[-3000:]

    def rows(self) -> list[dict[str, Any]]:
        conn = sqlite3.connect(self.db)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY started_at")]
        finally:
            conn.close()

    def db_bytes(self) -> bytes:
        """The database with its WAL and shared-memory files, to look for secrets in."""
        parts = [self.db, self.db.with_name(self.db.name + "-wal"), self.db.with_name(self.db.name + "-shm")]
        return b"".join(p.read_bytes() for p in parts if p.exists())


@pytest.fixture
async def stack(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    fake: TestServer = await aiohttp_server(fake_app(), host="127.0.0.1")
    port = free_port()
    db = tmp_path / "usage.db"
    log = tmp_path / "proxy.log"
    argv = [sys.executable, "-m", "proxy", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--upstream", str(fake.make_url("/api/v1")), "--db", str(db)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stack = Stack(fake=fake, proxy=proc, port=port, db=db, log=log)
    try:
        await _wait_healthy(stack)
        yield stack
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _wait_healthy(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(400):
            if stack.proxy.poll() is not None:
                raise AssertionError(f"proxy exited with {stack.proxy.returncode}:\n{stack.log.read_text(errors='replace')}")
            try:
                async with session.get(stack.proxy_root + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("proxy not healthy within 20 s:\n" + stack.log.read_text(errors="replace"))
