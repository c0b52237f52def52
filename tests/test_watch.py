"""`openrouter-spend watch` driven in a real terminal (tmux): a request that finished shows up, and
`q` or Ctrl-C quits with exit 0 and the terminal restored."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from decimal import Decimal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.tables import money
from tests.fake_openrouter import fake_cost

ROOT = Path(__file__).parent.parent
KEY = "sk-or-v1-test-" + "ab" * 20
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)")


class Tmux:
    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", str(self.socket), *args], capture_output=True, text=True, timeout=10, check=True).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "w")

    async def wait_for(self, needle: str, seconds: float = 20) -> str:
        for _ in range(int(seconds / 0.1)):
            text = self.screen()
            if needle in text:
                return text
            await asyncio.sleep(0.1)
        raise AssertionError(f"{needle!r} never appeared on screen:\n{self.screen()}")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(tmp_path / "tmux.sock")
    # A shell first, so the screen after quitting shows what the shell shows (the terminal restored).
    t("new-session", "-d", "-s", "w", "-x", "140", "-y", "45", "sh")
    try:
        yield t
    finally:
        subprocess.run(["tmux", "-S", str(t.socket), "kill-server"], capture_output=True, timeout=10)


def _watch_command(db: Path, home: Path) -> str:
    return (f"env -u OPENROUTER_SPEND_DB -u OPENROUTER_SPEND_CONFIG HOME={home} PYTHONPATH={ROOT} "
            f"{sys.executable} -m proxy watch --db {db} --interval 0.5; echo WATCH-EXIT=$?")


async def _ask(proxy: Any, session: str) -> None:
    async with openai.AsyncOpenAI(base_url=proxy.base, api_key=KEY, max_retries=0,
                                  default_headers={"X-Spend-Session": session}) as client:
        await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}])
    await proxy.settle()


async def test_a_finished_request_shows_up_and_q_quits(proxy: Any, tmux: Tmux, tmp_path: Path) -> None:
    await _ask(proxy, "first-session")
    tmux("send-keys", "-t", "w", _watch_command(proxy.db_path, tmp_path), "Enter")
    screen = await tmux.wait_for("first-session")
    assert "openrouter-spend watch" in screen and "openai/gpt-4o" in screen

    # A request that finishes while watch runs appears on the next redraw, and today's total grows.
    await _ask(proxy, "second-session")
    screen = await tmux.wait_for("second-session")
    assert screen.count("openai/gpt-4o") >= 2
    assert f"today {money(2 * Decimal(str(float(fake_cost('openai/gpt-4o')))))}" in screen, screen

    tmux("send-keys", "-t", "w", "q")
    screen = await tmux.wait_for("WATCH-EXIT=0")
    assert "openrouter-spend watch" not in screen, "the alternate screen is left on quit"


async def test_ctrl_c_quits_cleanly(proxy: Any, tmux: Tmux, tmp_path: Path) -> None:
    await _ask(proxy, "s1")
    tmux("send-keys", "-t", "w", _watch_command(proxy.db_path, tmp_path), "Enter")
    await tmux.wait_for("last requests")
    tmux("send-keys", "-t", "w", "C-c")
    screen = await tmux.wait_for("WATCH-EXIT=0")
    assert "Traceback" not in screen and "openrouter-spend watch" not in screen
    # The terminal is back in line mode with echo: what is typed shows, a line runs.
    tmux("send-keys", "-t", "w", "echo typed-$((1+1))", "Enter")
    await tmux.wait_for("typed-2")
