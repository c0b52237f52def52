"""Issue 14: every reader answers the same on PostgreSQL as on SQLite.

Two proxies, one on a SQLite file and one on a throwaway PostgreSQL database, get the same mixed
traffic (models, projects, sessions, streams, upstream errors, costs down to 1e-18). Then every
reader is run against each: `report` (several groupings, a breakdown, a glob filter, a half-hour
time zone), `budgets`, `whatif`, `models --changes`, `reconcile`, `statusline`, and the page's
/-/ endpoints. The documents must be equal, and the totals equal the rows' own sums.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.budgets.spec import parse_budgets
from proxy.cli.main import main
from proxy.store.reader import open_reader, open_writer
from tests.fake_openrouter import KEYS

KEY_SQLITE = "sk-or-v1-" + "5" * 64
KEY_POSTGRES = "sk-or-v1-" + "6" * 64
MODELS = ("openai/gpt-4o", "anthropic/claude-sonnet-4.5", "google/gemini-2.5-flash")
COSTS = ("0.001", "0.0123", "0.000000000000000001", "0.5")
BUDGETS = [
    {"name": "daily", "limit_usd": 5, "period": "day", "scope": "total"},
    {"name": "per-project", "limit_usd": 2, "period": "month", "scope": "project", "action": "warn"},
    {"name": "claude", "limit_usd": 1, "period": "rolling:5h", "match": {"model": "anthropic/*"}},
]


async def _traffic(proxy: Any, key: str) -> None:
    """The same 30 requests for each proxy, in the same order."""
    for i in range(30):
        headers = {
            "Authorization": f"Bearer {key}",
            "X-Fake-Cost": COSTS[i % 4],
            "X-Spend-Session": f"s{i % 4}",
            "X-Title": ("aider", "claude-code")[i % 2],
        }
        if i % 3:
            headers["X-Spend-Project"] = ("acme", "beta")[i % 2]
        if i % 7 == 3:
            headers["X-Fake"] = "error500"
        body = {"model": MODELS[i % 3], "messages": [{"role": "user", "content": "hi"}], "stream": i % 5 == 0}
        response = await proxy.client.post("/api/v1/chat/completions", json=body, headers=headers)
        await response.read()
    await proxy.settle()


def _cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


async def _run(*args: str) -> Any:
    # In a thread: some commands run their own event loop (reconcile's fetch).
    code, out = await asyncio.to_thread(_cli, *args)
    assert code in (0, 1), out
    return out


@pytest.fixture
async def pair(start_proxy: Any, make_config: Any, upstream: Any, pg_url: str, tmp_path: Path) -> dict[str, Any]:
    """name -> (proxy, db target, config file) for a SQLite proxy and a PostgreSQL one, same traffic."""
    upstream.app[KEYS].update({KEY_SQLITE, KEY_POSTGRES})
    budgets = parse_budgets(BUDGETS)
    sqlite_proxy = await start_proxy(make_config(budgets=budgets))
    pg_proxy = await start_proxy(make_config(db_url=pg_url, budgets=budgets))
    out: dict[str, Any] = {}
    for name, proxy, db, key in (
        ("sqlite", sqlite_proxy, str(sqlite_proxy.db_path), KEY_SQLITE),
        ("postgresql", pg_proxy, pg_url, KEY_POSTGRES),
    ):
        await _traffic(proxy, key)
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"db": db, "budgets": BUDGETS}))
        out[name] = (proxy, db, config, key)
    return out


def _row_sums(db: str) -> tuple[int, Decimal]:
    with contextlib.closing(open_reader(db)) as reader:
        rows = reader.execute("SELECT cost_usd FROM requests").fetchall()
    return len(rows), sum((Decimal(r[0]) for r in rows if r[0] is not None), Decimal(0))


def _timeless(document: Any) -> Any:
    """Times of day differ by the milliseconds between the two proxies' requests; the rest may not."""
    if isinstance(document, dict):
        return {k: _timeless(v) for k, v in document.items() if k not in ("first_seen", "last_seen", "duration_s", "since", "until")}
    if isinstance(document, list):
        return [_timeless(v) for v in document]
    return document


async def test_every_reader_answers_the_same_on_postgresql_as_on_sqlite(pair: dict[str, Any], monkeypatch: Any) -> None:
    results: dict[str, dict[str, Any]] = {}
    for name, (proxy, db, config, key) in pair.items():
        got: dict[str, Any] = {}
        count, total = _row_sums(db)
        assert count == 30
        for args in (
            ("--by", "model"),
            ("--by", "day", "--breakdown", "model"),
            ("--by", "session", "--breakdown", "project"),
            ("--by", "project", "--model", "anthropic/*"),
            ("--by", "client", "--since", "1d"),
            ("--by", "hour", "--tz", "Asia/Kolkata"),
            ("--by", "endpoint", "--limit", "1"),
        ):
            document = json.loads(await _run("report", "--db", db, "--format", "json", *args))
            got["report " + " ".join(args)] = _timeless(document)
            # Equal to the rows themselves, not only to the other engine.
            if "--model" not in args and "--limit" not in args:
                assert document["total"]["requests"] == count and Decimal(document["total"]["cost_usd"]) == total
        # Keys: the fingerprints are salted per database, so compare everything but the names.
        by_key = json.loads(await _run("report", "--db", db, "--format", "json", "--by", "key"))
        got["report --by key"] = sorted(json.dumps({k: v for k, v in row.items() if k != "group"}) for row in by_key["rows"])

        budgets = json.loads(await _run("budgets", "--config", str(config), "--format", "json"))
        got["budgets"] = [_budget(b) for b in budgets]
        assert any(Decimal(b["spent_usd"]) > 0 for b in budgets)

        got["whatif"] = json.loads(await _run("whatif", "--db", db, "--model", "openai/gpt-4o-mini", "--format", "json"))
        # A price change, the same on both: the proxy recorded the snapshot's prices at start.
        with contextlib.closing(open_writer(db)) as writer:
            (pricing,) = writer.execute("SELECT pricing FROM model_prices WHERE model_id = ?", ("openai/gpt-4o",)).fetchone()
            changed = json.dumps({**json.loads(pricing), "prompt": "0.000001"}, sort_keys=True, separators=(",", ":"))
            writer.execute(
                "INSERT INTO model_prices (model_id, pricing, first_seen_at) VALUES (?, ?, ?)",
                ("openai/gpt-4o", changed, "2099-01-01T00:00:00.000000Z"),
            )
        got["models --changes"] = json.loads(await _run("models", "--changes", "--db", db, "--format", "json"))
        assert got["models --changes"]

        monkeypatch.setenv("OPENROUTER_API_KEY", key)
        reconcile = json.loads(await _run("reconcile", "--db", db, "--upstream", _upstream(proxy), "--format", "json"))
        got["reconcile"] = [{k: v for k, v in line.items()} for line in reconcile["lines"]]
        assert reconcile["within_tolerance"] is True

        status = io.StringIO()
        from proxy.cli import statusline

        with contextlib.redirect_stdout(status):
            assert statusline.main(["--db", db, "--session", "s1", "--format", "{session_cost} {session_requests} {today}"], io.StringIO("{}")) == 0
        got["statusline"] = status.getvalue()
        assert got["statusline"].split()[1] == "8"

        page: dict[str, Any] = {}
        for path in ("/-/report?by=model", "/-/report?by=session", "/-/timeseries?by=model&step=hour", "/-/sessions?by=session",
                     "/-/sessions?by=project", "/-/cache", "/-/free-usage", "/-/price-changes", "/-/whatif?target=openai/gpt-4o-mini",
                     "/-/recent?limit=50", "/-/budgets"):
            response = await proxy.client.get(path)
            assert response.status == 200, (name, path, await response.text())
            page[path] = await response.json()
        report_doc = page["/-/report?by=model"]
        assert report_doc["total"]["requests"] == count and Decimal(report_doc["total"]["cost_usd"]) == total
        page["/-/recent?limit=50"] = sorted(
            json.dumps({k: v for k, v in r.items() if k not in ("id", "started_at", "key_fingerprint", "ttfb_ms", "duration_ms")}, sort_keys=True)
            for r in page["/-/recent?limit=50"]["requests"]
        )
        page["/-/timeseries?by=model&step=hour"] = {s["name"]: s["total"] for s in page["/-/timeseries?by=model&step=hour"]["series"]}
        page["/-/budgets"] = [_budget(b) for b in page["/-/budgets"]["budgets"]]
        got.update(_timeless(page))
        results[name] = got
    sqlite, postgresql = results["sqlite"], results["postgresql"]
    assert sqlite.keys() == postgresql.keys() and len(sqlite) == 24
    for what in sqlite:
        assert postgresql[what] == sqlite[what], (what, json.dumps(postgresql[what]), json.dumps(sqlite[what]))


_FIELDS = ("budget", "scope", "scope_value", "spent_usd", "limit_usd", "share", "window_start", "window_end", "resets_at")


def _budget(status: dict[str, Any]) -> dict[str, Any]:
    # A rolling window ends now: its ends differ by the moment each command ran.
    rolling = status["budget"] == "claude"
    return {k: status.get(k) for k in _FIELDS if not (rolling and k in ("window_start", "window_end"))}


def _upstream(proxy: Any) -> str:
    from proxy.server.app import CONFIG

    return str(proxy.app[CONFIG].upstream)
