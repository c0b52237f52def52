"""A full disk: requests keep flowing, rows are held and retried, and arrive once there is room.

The database lives on a real 1 MiB tmpfs that the test fills up; mounting needs root (CI runs as
root). Elsewhere the test says loudly that it did not run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.server.app import RECORDER
from tests.faults.conftest import CHAT, KEY, metric_value

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        message = f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}): disk-full test NOT RUN"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path) -> Path:
    filler = mount / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # ENOSPC: the disk is full
    finally:
        os.close(fd)
    return filler


async def test_full_disk_holds_rows_and_writes_them_when_space_returns(
    start_proxy: Any, make_config: Any, tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    proxy = await start_proxy(make_config(db=tiny_disk / "usage.db"))
    await proxy.settle()  # the catalog's prices are written first
    filler = _fill(tiny_disk)
    for i in range(30):
        response = await proxy.client.post(
            "/api/v1/chat/completions",
            json={**CHAT, "stream": i % 2 == 0, "messages": [{"role": "user", "content": "x" * 2000}]},
            headers={**AUTH, "X-Spend-Session": f"d{i}"},
        )
        assert response.status == 200  # the agent never notices
        await response.read()
    errors = 0.0
    for _ in range(200):
        errors = metric_value(await proxy.metrics_text(), "openrouter_proxy_recorder_write_errors_total")
        if errors > 0:
            break
        await asyncio.sleep(0.05)
    assert errors > 0, "the full disk never made a write fail"
    assert any("event=record_write_failed" in r.getMessage() and "full" in r.getMessage() for r in caplog.records)
    assert proxy.server.app[RECORDER].depth() > 0  # held, not dropped
    filler.unlink()
    for _ in range(300):
        if len(proxy.rows()) == 30:
            break
        await asyncio.sleep(0.05)
    assert {r["session"] for r in proxy.rows()} == {f"d{i}" for i in range(30)}
    assert metric_value(await proxy.metrics_text(), "openrouter_proxy_recorder_dropped_total") == 0
