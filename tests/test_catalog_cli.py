"""`models` and `estimate` use the newest listing the proxy fetched and stored, and the first
`models --changes` after install does not report built-in-snapshot-vs-live differences as changes."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.fake_openrouter import PRICE_CHANGES

ROOT = Path(__file__).parent.parent


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_SPEND_", "XDG_"))}
    env.update(PYTHONPATH=str(ROOT), HOME=str(home))
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=60, cwd=home, env=env)


async def _wait_for(db: Path, query: str, count: int = 1) -> None:
    for _ in range(200):
        try:
            with sqlite3.connect(db) as conn:
                if conn.execute(query).fetchone()[0] >= count:
                    return
        except sqlite3.Error:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {query}")


async def test_first_changes_after_install_are_empty_then_real_moves_show(start_proxy: Any, upstream: Any, tmp_path: Path) -> None:
    proxy = await start_proxy(catalog_refresh_s=3600)  # refreshes from the fake at start
    await _wait_for(proxy.db_path, "SELECT count(*) FROM meta WHERE key = 'catalog_listing'")
    await proxy.settle()
    first = cli("models", "--changes", "--db", str(proxy.db_path), "--format", "json", home=tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == [], "built-in snapshot vs live listing is not a price change"

    # A real move between two fetches is one.
    upstream.app[PRICE_CHANGES]["openai/gpt-4o"] = {"prompt": "0.000003"}
    from proxy.server.app import CATALOG, METRICS, RECORDER, SESSION
    from proxy.pricing.refresh import refresh_once

    app = proxy.app
    assert await refresh_once(app[CATALOG], app[SESSION], str(upstream.make_url("/api/v1")), app[RECORDER], app[METRICS])
    await proxy.settle()
    changed = json.loads(cli("models", "--changes", "--db", str(proxy.db_path), "--format", "json", home=tmp_path).stdout)
    assert [r["model"] for r in changed] == ["openai/gpt-4o"]


async def test_models_and_estimate_use_the_listing_the_proxy_stored(start_proxy: Any, upstream: Any, tmp_path: Path) -> None:
    upstream.app[PRICE_CHANGES]["openai/gpt-4o"] = {"prompt": "0.000004", "completion": "0.00002"}
    proxy = await start_proxy(catalog_refresh_s=3600)
    await _wait_for(proxy.db_path, "SELECT count(*) FROM meta WHERE key = 'catalog_listing'")
    await proxy.settle()

    estimate = cli("estimate", "--db", str(proxy.db_path), "--input", "1M", "--output", "0", "--model", "openai/gpt-4o", home=tmp_path)
    assert estimate.returncode == 0, estimate.stderr
    assert "$4.00" in estimate.stdout, estimate.stdout  # the fetched price, not the built-in snapshot's
    assert f"stored by the proxy in {proxy.db_path}" in estimate.stdout
    models = cli("models", "--db", str(proxy.db_path), "--search", "openai/gpt-4o", home=tmp_path)
    assert "stored by the proxy" in models.stdout and "$4.00" in models.stdout, models.stdout

    # Found without --db too, through the same discovery as every command.
    found = cli("estimate", "--input", "1M", "--output", "0", "--model", "openai/gpt-4o", home=tmp_path,)
    assert "built-in snapshot" in found.stdout  # HOME has no database: the snapshot, and it says so
