"""`reconcile` and `import-activity` as real subprocesses against the fake OpenRouter, with rows made by
real openai-SDK traffic through the proxy: a gap appears when traffic bypasses the proxy."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fake_openrouter import ACTIVITY_TODAY, KEYS, MANAGEMENT_KEYS, fake_cost

ROOT = Path(__file__).resolve().parent.parent
# Built from parts so nothing that looks like a real key is committed.
KEY = "-".join(("sk", "or", "v1", "reconcile")) + "0" * 40
MANAGEMENT = "-".join(("sk", "or", "v1", "mgmt")) + "1" * 40
OTHER = "-".join(("sk", "or", "v1", "other")) + "2" * 40


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The CLI in a child process; awaited, so the fake upstream in this loop keeps answering it."""
    environ = {k: v for k, v in os.environ.items() if k not in ("OPENROUTER_API_KEY", "TEST_MGMT_KEY")}
    environ["PYTHONPATH"] = str(ROOT)
    environ.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args, cwd=ROOT, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def chat_through(proxy: Any, key: str = KEY, n: int = 1) -> None:
    async with openai.AsyncOpenAI(base_url=proxy.base, api_key=key, max_retries=0) as client:
        for _ in range(n):
            await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}])
            stream = await client.chat.completions.create(
                model="anthropic/claude-sonnet-4.5", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            async for _ in stream:
                pass
    await proxy.settle()


async def chat_around(upstream: Any, key: str = KEY) -> None:
    """Straight to OpenRouter, past the proxy: billed there, never logged here."""
    async with openai.AsyncOpenAI(base_url=str(upstream.make_url("/api/v1")), api_key=key, max_retries=0) as client:
        await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}])


@pytest.fixture
def books(upstream: Any) -> Any:
    upstream.app[KEYS].update({KEY, OTHER})
    upstream.app[MANAGEMENT_KEYS].add(MANAGEMENT)
    return upstream


def reconcile_args(proxy: Any, upstream: Any, *extra: str) -> list[str]:
    return ["reconcile", "--db", str(proxy.db_path), "--upstream", str(upstream.make_url("/api/v1")), *extra]


async def test_key_gap_appears_when_traffic_bypasses_the_proxy(start_proxy: Any, books: Any) -> None:
    proxy = await start_proxy()
    await chat_through(proxy, n=2)
    await chat_through(proxy, key=OTHER)  # another key's rows must not count for this one
    env = {"OPENROUTER_API_KEY": KEY}
    code, out, err = await run_cli(*reconcile_args(proxy, books, "--format", "json"), env=env)
    assert (code, err) == (0, ""), out
    report = json.loads(out)
    assert report["within_tolerance"] is True
    day = next(x for x in report["lines"] if x["what"] == "day")
    assert day["meaning"] == "matches" and day["gap_usd"] is not None
    assert float(day["openrouter_usd"]) == pytest.approx(float(day["ours_usd"])) and float(day["ours_usd"]) > 0
    assert {x["what"] for x in report["lines"]} == {"day", "week", "month", "byok day", "byok week", "byok month"}

    await chat_around(books)
    code, out, err = await run_cli(*reconcile_args(proxy, books, "--format", "json"), env=env)
    assert code == 1, err
    day = next(x for x in json.loads(out)["lines"] if x["what"] == "day")
    assert day["within_tolerance"] is False
    bypassed = float(fake_cost("openai/gpt-4o"))
    assert float(day["gap_usd"]) == pytest.approx(bypassed)
    assert "bypassed the proxy" in day["meaning"]
    assert KEY not in out and KEY not in err

    # The bypass stays in OpenRouter's windows; a tolerance wider than the gap accepts it.
    code, out, _ = await run_cli(*reconcile_args(proxy, books, "--tolerance", "50%"), env=env)
    assert code == 0
    assert "matches" in out and "openrouter" in out and "gap %" in out


async def test_table_output_names_each_window_and_what_the_gap_means(start_proxy: Any, books: Any) -> None:
    proxy = await start_proxy()
    await chat_around(books)
    await chat_through(proxy)  # the database needs its salt: serve made it
    await chat_around(books)
    code, out, _ = await run_cli(*reconcile_args(proxy, books), env={"OPENROUTER_API_KEY": KEY})
    assert code == 1
    lines = out.splitlines()
    day = next(line for line in lines if line.split()[:2] == ["key", "day"])
    assert "GAP" in day and "bypassed the proxy" in day
    byok = next(line for line in lines if line.split()[:3] == ["key", "byok", "day"])
    # No BYOK traffic on either side: the log records the provider part apart, and both say $0.
    assert byok.split()[3:5] == ["$0.00", "$0.00"] and "GAP" not in byok



async def test_no_gap_when_every_request_goes_through_the_proxy_in_managed_mode(
    start_proxy: Any, books: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Managed mode: rows carry the proxy keys' fingerprints, but every request went out on the one key.
    proxy_key = "spend-team-" + "c" * 24
    monkeypatch.setenv("TEST_OPENROUTER_KEY", KEY)
    monkeypatch.setenv("TEST_PROXY_KEY", proxy_key)
    from proxy.config import KeyAlias

    config = make_config(managed_key_env="TEST_OPENROUTER_KEY", keys=(KeyAlias(alias="team", key_env="TEST_PROXY_KEY"),))
    proxy = await start_proxy(config)
    await chat_through(proxy, key=proxy_key, n=2)
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(f"managed_key_env: TEST_OPENROUTER_KEY\nkeys:\n  - alias: team\n    key_env: TEST_PROXY_KEY\ndb: {proxy.db_path}\n"
                   f"upstream: {books.make_url('/api/v1')}\n")
    env = {"TEST_OPENROUTER_KEY": KEY, "TEST_PROXY_KEY": proxy_key}
    code, out, err = await run_cli("reconcile", "--config", str(cfg), "--format", "json", env=env)
    assert (code, err) == (0, ""), out
    assert all(x["within_tolerance"] for x in json.loads(out)["lines"])


async def test_activity_day_by_model_and_import_twice_gives_the_same_rows(start_proxy: Any, books: Any) -> None:
    books.app[ACTIVITY_TODAY].append(True)  # the fake counts today as a completed day
    proxy = await start_proxy()
    await chat_through(proxy, n=2)
    env = {"TEST_MGMT_KEY": MANAGEMENT}
    args = reconcile_args(proxy, books, "--management-key-env", "TEST_MGMT_KEY", "--format", "json")
    code, out, err = await run_cli(*args, env=env)
    assert (code, err) == (0, ""), out
    lines = json.loads(out)["lines"]
    assert {x["scope"] for x in lines} == {"activity"}  # no OPENROUTER_API_KEY: activity only
    assert sorted(x["what"].split()[1] for x in lines) == ["anthropic/claude-sonnet-4.5", "openai/gpt-4o"]
    assert all(x["openrouter_requests"] == x["our_requests"] == 2 for x in lines)

    await chat_around(books, key=OTHER)  # another key of the account, not through the proxy
    code, out, _ = await run_cli(*args, env=env)
    assert code == 1
    gpt = next(x for x in json.loads(out)["lines"] if x["what"].endswith("openai/gpt-4o"))
    assert (gpt["openrouter_requests"], gpt["our_requests"]) == (3, 2)
    assert gpt["meaning"].startswith("1 requests OpenRouter counted are not in the log")

    imp = ["import-activity", "--db", str(proxy.db_path), "--upstream", str(books.make_url("/api/v1")),
           "--management-key-env", "TEST_MGMT_KEY"]
    code, out, err = await run_cli(*imp, env=env)
    assert (code, err) == (0, ""), out
    first = _imported(proxy.db_path)
    code, out, _ = await run_cli(*imp, env=env)
    assert code == 0 and "imported 2 " in out
    assert _imported(proxy.db_path) == first
    assert [(r[1], r[7]) for r in first] == [("anthropic/claude-sonnet-4.5", 2), ("openai/gpt-4o", 3)]

    from proxy.store.activity import imported_activity

    db = sqlite3.connect(proxy.db_path)
    try:
        rows = imported_activity(db)
    finally:
        db.close()
    assert [(r.model, r.requests, r.provider) for r in rows] == [
        ("anthropic/claude-sonnet-4.5", 2, "FakeProvider"), ("openai/gpt-4o", 3, "FakeProvider")]


def _imported(path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return [tuple(r)[:11] for r in db.execute("SELECT * FROM imported_activity ORDER BY date, model")]
    finally:
        db.close()


async def test_errors_are_one_line_exit_2_and_write_nothing(start_proxy: Any, books: Any, tmp_path: Path) -> None:
    proxy = await start_proxy()
    await chat_through(proxy)
    revoked = "-".join(("sk", "or", "v1", "revoked")) + "3" * 40
    code, out, err = await run_cli(*reconcile_args(proxy, books), env={"OPENROUTER_API_KEY": revoked})
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "OPENROUTER_API_KEY" in err and "401" in err and revoked not in err

    code, _, err = await run_cli(*reconcile_args(proxy, books, "--key-env", "NOT_SET_ANYWHERE"))
    assert code == 2 and err == "openrouter-spend: --key-env: environment variable NOT_SET_ANYWHERE is not set\n"

    # An ordinary key cannot read /activity: the variable is named.
    code, _, err = await run_cli(*reconcile_args(proxy, books, "--management-key-env", "TEST_MGMT_KEY"),
                                 env={"OPENROUTER_API_KEY": KEY, "TEST_MGMT_KEY": OTHER})
    assert code == 2 and err.count("\n") == 1 and "TEST_MGMT_KEY" in err and "403" in err

    # Nothing listens on this port: one line, exit 2, and import-activity writes nothing.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1"
    sock.close()
    code, _, err = await run_cli("reconcile", "--db", str(proxy.db_path), "--upstream", dead, env={"OPENROUTER_API_KEY": KEY})
    assert code == 2 and err.count("\n") == 1 and "cannot reach" in err
    fresh = tmp_path / "fresh.db"
    code, _, err = await run_cli("import-activity", "--db", str(fresh), "--upstream", dead, "--management-key-env",
                                 "TEST_MGMT_KEY", env={"TEST_MGMT_KEY": MANAGEMENT})
    assert code == 2 and err.count("\n") == 1 and not fresh.exists()
    code, _, err = await run_cli("import-activity", "--db", str(fresh), "--upstream", str(books.make_url("/api/v1")),
                                 "--management-key-env", "TEST_MGMT_KEY", env={"TEST_MGMT_KEY": revoked})
    assert code == 2 and "TEST_MGMT_KEY" in err and "401" in err and not fresh.exists()


# -- serve's periodic comparison -------------------------------------------------------------------


def _gauge(text: str, window: str) -> float:
    prefix = f'openrouter_proxy_reconcile_gap_usd{{window="{window}"}} '
    (line,) = [x for x in text.splitlines() if x.startswith(prefix)]
    return float(line[len(prefix):])


async def test_serve_exports_the_gap_as_a_gauge(start_proxy: Any, books: Any, make_config: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.config import ReconcileConfig
    from proxy.server.app import RECONCILER

    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    proxy = await start_proxy(make_config(reconcile=ReconcileConfig(interval_minutes=60)))
    await chat_through(proxy, n=2)
    lines = await proxy.app[RECONCILER].check()  # the loop's own step, run now instead of in an hour
    assert lines is not None and all(x.within for x in lines)
    text = await proxy.metrics_text()
    assert _gauge(text, "day") == pytest.approx(0, abs=1e-9) and _gauge(text, "month") == pytest.approx(0, abs=1e-9)
    assert 'openrouter_proxy_reconcile_gap_usd{window="byok_day"} 0.0' in text  # no BYOK traffic: no gap

    await chat_around(books)
    await proxy.app[RECONCILER].check()
    text = await proxy.metrics_text()
    assert _gauge(text, "day") == pytest.approx(float(fake_cost("openai/gpt-4o")))
    assert "openrouter_proxy_reconcile_failures_total 0.0" in text


async def test_serve_survives_a_refused_key_and_counts_the_failure(start_proxy: Any, books: Any, make_config: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.config import ReconcileConfig
    from proxy.server.app import RECONCILER

    monkeypatch.setenv("TEST_RECONCILE_KEY", "-".join(("sk", "or", "v1", "gone")) + "4" * 40)
    proxy = await start_proxy(make_config(reconcile=ReconcileConfig(interval_minutes=60, key_env="TEST_RECONCILE_KEY")))
    assert await proxy.app[RECONCILER].check() is None
    text = await proxy.metrics_text()
    (failures,) = [x for x in text.splitlines() if x.startswith("openrouter_proxy_reconcile_failures_total ")]
    assert float(failures.split()[1]) >= 1  # this check (the start-up one may still be under way)
    assert 'reconcile_gap_usd{' not in text


def test_reconcile_config_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, make_config: Any) -> None:
    from proxy.config import ReconcileConfig, parse_config
    from proxy.errors import ConfigError
    from proxy.server.app import create_app

    assert parse_config({}).reconcile == ReconcileConfig()
    assert parse_config({"reconcile": {"interval_minutes": 15, "key_env": "K"}}).reconcile == ReconcileConfig(15, "K")
    for raw, message in [({"interval_minutes": "often"}, "reconcile.interval_minutes: expected a number, got 'often'"),
                         ({"interval_minutes": 0}, "reconcile.interval_minutes: expected a positive number, got 0"),
                         ({"every": 5}, "reconcile.every: unknown key (known: interval_minutes, key_env)")]:
        with pytest.raises(ConfigError) as caught:
            parse_config({"reconcile": raw})
        assert str(caught.value) == message
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="^reconcile.key_env: environment variable OPENROUTER_API_KEY is not set$"):
        create_app(make_config(reconcile=ReconcileConfig(interval_minutes=5)))
