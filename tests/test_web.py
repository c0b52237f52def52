"""The /-/ JSON endpoints: the report equals the CLI's, bad input is a 400, access rules, routing, headers."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cli.main import main
from proxy.config import MetricsConfig, UiConfig
from proxy.store.records import UsageRecord
from proxy.store.sqlite import encode_record, encode_time, REQUEST_COLUMNS

KEY = "sk-or-v1-test-" + "cd" * 20
XSS = "<img src=x onerror=window.__xss=1>"


def record(**changes: Any) -> UsageRecord:
    now = datetime.now(UTC)
    base: dict[str, Any] = dict(
        id="r0", started_at=now, finished_at=now, method="POST", endpoint="chat/completions",
        model_requested="openai/gpt-4o", model="openai/gpt-4o", provider="OpenAI", generation_id=None,
        key_fingerprint="00aa11bb22cc33dd", key_alias=None, project="acme", session="s1", client="aider",
        streamed=False, status=200, outcome="ok", error=None, input_tokens=1000, output_tokens=200,
        cached_tokens=400, cache_write_tokens=0, reasoning_tokens=50, web_search_requests=None,
        cost_usd=Decimal("0.0123"), cost_reported_usd=Decimal("0.0123"), cost_catalog_usd=Decimal("0.0120"),
        cost_source="reported", is_free=False, is_byok=False, ttfb_ms=120.0, duration_ms=900.0,
    )
    base.update(changes)
    return UsageRecord(**base)


def insert(db_path: Path, records: list[UsageRecord]) -> None:
    """Rows as any writer may have left them: raw values, including hostile text."""
    # The proxy's writer may hold the write lock for a batch: wait for it rather than fail.
    db = sqlite3.connect(db_path, timeout=30)
    try:
        marks = ", ".join("?" for _ in REQUEST_COLUMNS)
        db.executemany(f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({marks})",
                       [encode_record(r) for r in records])
        db.commit()
    finally:
        db.close()


def known_rows() -> list[UsageRecord]:
    now = datetime.now(UTC)
    rows = []
    models = [("openai/gpt-4o", "0.0123"), ("anthropic/claude-sonnet-4", "0.2101"), ("meta-llama/llama-3.1-8b-instruct", "0.00007")]
    for i in range(30):
        model, cost = models[i % 3]
        rows.append(record(
            id=f"r{i}", started_at=now - timedelta(hours=i * 5), finished_at=now - timedelta(hours=i * 5),
            model=model, cost_usd=Decimal(cost) + Decimal(i) / 10000, project=("acme", "beta", None)[i % 3],
            session=f"s{i % 4}", outcome="ok" if i % 7 else "upstream_error",
            cost_reported_usd=Decimal(cost), cost_catalog_usd=Decimal(cost) * Decimal("0.98"),
        ))
    rows.append(record(id="xss", session=XSS, project=XSS, client=XSS, model=XSS, cost_usd=None,
                       cost_source="unknown"))
    rows.append(record(id="old", started_at=now - timedelta(days=40), finished_at=now - timedelta(days=40)))
    return rows


async def _json(proxy: Any, path: str, status: int = 200) -> Any:
    response = await proxy.client.get(path)
    text = await response.text()
    assert response.status == status, text
    return json.loads(text)


@pytest.mark.parametrize("by", ["model", "project", "session", "day", "key", "client"])
@pytest.mark.parametrize("since", ["7d", "30d", None])
async def test_report_equals_the_cli(proxy: Any, capsys: Any, by: str, since: str | None) -> None:
    insert(proxy.db_path, known_rows())
    query = f"by={by}" + (f"&since={since}" if since else "")
    page = await _json(proxy, f"/-/report?{query}")
    argv = ["report", "--db", str(proxy.db_path), "--by", by, "--format", "json"] + (["--since", since] if since else [])
    assert main(argv) == 0
    cli = json.loads(capsys.readouterr().out)
    assert_same_report(page, cli)
    assert page["total"]["requests"] > 0


@pytest.mark.parametrize("by", ["session", "model"])
async def test_report_with_a_limit_equals_the_cli_with_the_same_limit(proxy: Any, capsys: Any, by: str) -> None:
    # The costliest N groups, as `report --limit N`: fast over any range (a report of every session
    # of a busy log is tens of MB), with the note saying how many there were and the total of all.
    insert(proxy.db_path, known_rows())
    page = await _json(proxy, f"/-/report?by={by}&limit=2")
    assert main(["report", "--db", str(proxy.db_path), "--by", by, "--limit", "2", "--format", "json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert_same_report(page, cli)
    everything = await _json(proxy, f"/-/report?by={by}")
    assert len(page["rows"]) == 2 < len(everything["rows"])
    assert page["rows"] == everything["rows"][:2] and page["total"] == everything["total"]
    await _json(proxy, f"/-/report?by={by}&limit=x", status=400)


async def test_the_report_is_written_as_json_text_in_the_reader_not_on_the_event_loop(proxy: Any) -> None:
    # A report of every session is tens of MB of JSON: the reader's worker writes the text, so the
    # proxy's event loop neither unpickles a dict per row nor encodes them (0.4 s on 31k sessions).
    from proxy.store import reports
    from proxy.store.reader import open_reader
    from proxy.web import reads
    from proxy.web.query import parse_query

    insert(proxy.db_path, known_rows())
    now = datetime.now(UTC)
    query = parse_query([("by", "session")], {"by", "since", "tz"}, now)
    db = open_reader(proxy.db_path)
    try:
        written = reads.report(db, query, 50, now)
        document = reports.as_document(reports.report(db, "session"), reports.free_usage(db, now, 50))
    finally:
        db.close()
    assert isinstance(written, reads.JsonText)
    assert written == json.dumps(document)
    response = await proxy.client.get("/-/report?by=session")
    assert response.content_type == "application/json"
    assert json.loads(await response.text()) == document


def assert_same_report(page: dict[str, Any], cli: dict[str, Any]) -> None:
    # A range's start is "now minus 7d" for each, and the two were asked a few ms apart.
    page, cli = dict(page), dict(cli)
    for bound in ("since", "until"):
        ours, theirs = page.pop(bound), cli.pop(bound)
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert abs(datetime.fromisoformat(ours) - datetime.fromisoformat(theirs)) < timedelta(seconds=30)
    assert page == cli


async def test_report_days_follow_tz_as_the_cli_does(start_proxy: Any, capsys: Any) -> None:
    proxy = await start_proxy(timezone="Pacific/Auckland")
    insert(proxy.db_path, known_rows())
    for tz in (None, "Pacific/Auckland"):
        page = await _json(proxy, "/-/report?by=day&since=30d" + (f"&tz={tz}" if tz else ""))
        assert main(["report", "--db", str(proxy.db_path), "--by", "day", "--since", "30d", "--format", "json",
                     *(["--tz", tz] if tz else [])]) == 0
        assert_same_report(page, json.loads(capsys.readouterr().out))


async def test_report_filters_narrow_the_rows(proxy: Any) -> None:
    insert(proxy.db_path, known_rows())
    everything = await _json(proxy, "/-/report?by=model&since=30d")
    acme = await _json(proxy, "/-/report?by=model&since=30d&project=acme")
    assert 0 < acme["total"]["requests"] < everything["total"]["requests"]
    one = await _json(proxy, "/-/report?by=session&session=s1&model=openai/gpt-4o")
    assert [r["group"] for r in one["rows"]] == ["s1"]


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/-/report?bogus=1", "unknown parameter 'bogus'"),
        ("/-/report?since=soon", "since: expected"),
        ("/-/report?since=2026-13-45", "since: expected"),
        ("/-/report?by=colour", "by: expected"),
        ("/-/report?tz=Mars/Base", "tz: unknown"),
        ("/-/report?since=1d&until=3d", "is before since"),
        ("/-/timeseries?step=minute", "step: expected"),
        ("/-/timeseries?by=day", "by: expected"),
        ("/-/timeseries?step=hour&since=2000-01-01", "more than"),
        ("/-/recent?limit=0", "limit: expected 1"),
        ("/-/recent?limit=ten", "limit: expected a whole number"),
        ("/-/sessions?by=nothing", "by: expected"),
        ("/-/whatif", "target:"),
        ("/-/whatif?target=no/such-model", "no/such-model"),
        ("/-/models?input=10&output=x", "output: expected"),
        ("/-/models?input=10&output=5&target=no/such-model", "no/such-model"),
        ("/-/budgets?since=1d", "unknown parameter"),
    ],
)
async def test_bad_input_is_a_400_with_a_message(proxy: Any, path: str, words: str) -> None:
    insert(proxy.db_path, known_rows())
    body = await _json(proxy, path, 400)
    assert body["error"]["code"] == 400
    assert words in body["error"]["message"]


async def test_unknown_endpoint_is_a_404_never_forwarded(proxy: Any, upstream: Any) -> None:
    body = await _json(proxy, "/-/nope", 404)
    assert "no endpoint /-/nope" in body["error"]["message"]
    response = await proxy.client.post("/-/report", json={})
    assert response.status == 405


async def test_other_paths_still_reach_openrouter(proxy: Any) -> None:
    response = await proxy.client.post(
        "/api/v1/chat/completions", json={"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {KEY}", "X-Spend-Session": XSS},
    )
    assert response.status == 200
    await proxy.settle()
    recent = await _json(proxy, "/-/recent?limit=5")
    assert len(recent["requests"]) == 1
    assert recent["requests"][0]["model"] == "openai/gpt-4o"


async def test_timeseries_stacks_groups_and_sums_to_the_report(proxy: Any) -> None:
    insert(proxy.db_path, known_rows())
    for step in ("hour", "day"):
        series = await _json(proxy, f"/-/timeseries?since=7d&step={step}&by=model")
        report = await _json(proxy, "/-/report?since=7d&by=model")
        total = sum(sum(s["values"]) for s in series["series"])
        assert abs(total - float(report["total"]["cost_usd"])) < 1e-9
        assert all(len(s["values"]) == len(series["buckets"]) for s in series["series"])
        assert len(set(series["buckets"])) == len(series["buckets"])


async def test_sessions_have_first_last_seen_models_and_exact_cost(proxy: Any) -> None:
    insert(proxy.db_path, known_rows())
    sessions = await _json(proxy, "/-/sessions?since=30d&limit=100")
    report = await _json(proxy, "/-/report?since=30d&by=session")
    by_report = {r["group"]: r for r in report["rows"]}
    for row in sessions["rows"]:
        assert row["cost_usd"] == by_report[row["group"]]["cost_usd"]
        assert row["requests"] == by_report[row["group"]]["requests"]
        assert row["first_seen"] <= row["last_seen"]
    s0 = next(r for r in sessions["rows"] if r["group"] == "s0")
    assert s0["models"] == sorted({"openai/gpt-4o", "anthropic/claude-sonnet-4", "meta-llama/llama-3.1-8b-instruct"})


def spread_rows() -> list[UsageRecord]:
    """60 days of known rows: 12 sessions (more than the chart's 8 series), some running across the
    30-day and 7-day marks (so they straddle a range's start), several models, projects and keys,
    errors, refusals and costs unknown."""
    now = datetime.now(UTC)
    models = [("openai/gpt-4o", "0.0123"), ("anthropic/claude-sonnet-4", "0.2101"), ("meta-llama/llama-3.1-8b-instruct", "0.00007")]
    rows = []
    for i in range(240):
        model, cost = models[i % 3]
        at = now - timedelta(hours=i * 6 + (i % 5))
        kind = i % 11
        rows.append(record(
            id=f"w{i}", started_at=at, finished_at=at, model=model, project=("acme", "beta", None)[i % 3],
            session=f"s{(i // 3) % 12:02}" if i % 13 else None, key_alias=("alice", None)[i % 2], client=("aider", "codex")[i % 2],
            outcome="blocked" if kind == 0 else "upstream_error" if kind == 1 else "ok", status=402 if kind == 0 else 200,
            cost_usd=None if kind == 0 else Decimal(cost) + Decimal(i) / 100000 + Decimal("0.000000000000000001") * i,
            cost_reported_usd=None if i % 4 == 0 else Decimal(cost), cost_catalog_usd=None if i % 5 == 0 else Decimal(cost) * Decimal("0.98"),
            cached_tokens=i * 10, input_tokens=1000 + i, cache_write_tokens=i % 3,
        ))
    return rows


def _in_range(rows: list[UsageRecord], since: str | None) -> list[UsageRecord]:
    if since is None:
        return rows
    start = datetime.now(UTC) - timedelta(days=int(since.rstrip("d")))
    return [r for r in rows if r.started_at >= start]


def _group_of(r: UsageRecord, by: str) -> str:
    value = (r.key_alias or r.key_fingerprint) if by == "key" else getattr(r, by)
    return value or "(none)"


def raw_groups(rows: list[UsageRecord], by: str) -> list[dict[str, Any]]:
    """What /-/sessions said when it summed raw rows: every group, costliest first."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        row = out.setdefault(_group_of(r, by), {"requests": 0, "errors": 0, "models": set(), "cost": Decimal(0), "at": []})
        row["requests"] += 1
        row["errors"] += r.outcome != "ok"
        row["models"].add(r.model)
        row["cost"] += r.cost_usd or 0
        row["at"].append(r.started_at)
    ranked = sorted(out.items(), key=lambda item: (-item[1]["cost"], item[0]))
    return [
        {"group": name, "first_seen": encode_time(min(g["at"])), "last_seen": encode_time(max(g["at"])), "requests": g["requests"],
         "errors": g["errors"], "models": sorted(g["models"]), "cost_usd": str(g["cost"])}
        for name, g in ranked
    ]


def raw_series(rows: list[UsageRecord], by: str, step: str) -> dict[str, dict[str, Any]]:
    """The chart the raw-row version drew: per series its exact total and non-zero cells (UTC)."""
    cells: dict[tuple[str, str], Decimal] = {}
    totals: dict[str, Decimal] = {}
    for r in rows:
        bucket = r.started_at.strftime("%Y-%m-%d %H:00") if step == "hour" else r.started_at.date().isoformat()
        group = "total" if by == "day" else _group_of(r, by)
        cells[(bucket, group)] = cells.get((bucket, group), Decimal(0)) + (r.cost_usd or 0)
        totals[group] = totals.get(group, Decimal(0)) + (r.cost_usd or 0)
    ranked = sorted(totals, key=lambda g: (-totals[g], g))
    named = {g: g for g in ranked[:8]} | {g: "other" for g in ranked[8:]}
    out: dict[str, dict[str, Any]] = {}
    for (bucket, group), cost in cells.items():
        series = out.setdefault(named[group], {"total": Decimal(0), "cells": {}})
        series["cells"][bucket] = series["cells"].get(bucket, Decimal(0)) + cost
    for group, total in totals.items():
        out[named[group]]["total"] += total
    return {name: {"total": float(s["total"]), "cells": {b: float(v) for b, v in s["cells"].items() if v}} for name, s in out.items()}


@pytest.mark.parametrize("pruned", [False, True])
async def test_sessions_timeseries_and_cache_equal_the_raw_row_answers(proxy: Any, pruned: bool) -> None:
    """All read the rollups (sessions by session over a long range from the per-session one, the
    cache view's billed and catalog cost from the hourly one): the same answers as summing the
    rows, also once retention deleted the raw rows."""
    rows = spread_rows()
    insert(proxy.db_path, rows)
    if pruned:
        db = sqlite3.connect(proxy.db_path)
        db.execute("DELETE FROM requests WHERE started_at < ?", (encode_time(datetime.now(UTC) - timedelta(days=40)),))
        db.commit()
        db.close()
    for since in ("7d", "30d", None):
        kept = _in_range(rows, since)
        span = f"since={since}&" if since else ""
        for by in ("session", "model", "project", "key", "client"):
            got = (await _json(proxy, f"/-/sessions?{span}limit=5&by={by}"))["rows"]
            # The same amounts; the rollups print them without trailing zeros.
            for row in got:
                row["cost_usd"] = Decimal(row["cost_usd"])
            assert got == [row | {"cost_usd": Decimal(row["cost_usd"])} for row in raw_groups(kept, by)[:5]], (since, by)
        for by in ("session", "model", "key"):
            for step in ("day", "hour"):
                chart = await _json(proxy, f"/-/timeseries?{span}step={step}&by={by}")
                got_series = {
                    s["name"]: {"total": s["total"], "cells": {b: v for b, v in zip(chart["buckets"], s["values"]) if v}}
                    for s in chart["series"]
                }
                assert got_series == raw_series(kept, by, step), (since, by, step)
                assert [s["name"] for s in chart["series"]][-1:] != ["other"] or len(chart["series"]) == 9
        for narrow, chosen in (("", kept), ("project=acme&", [r for r in kept if r.project == "acme"])):
            cache = await _json(proxy, f"/-/cache?{span}{narrow}".rstrip("&?"))
            assert {m["model"]: strip_saved(m) for m in cache["models"]} == raw_cache(chosen), (since, narrow)
            both = [r for r in chosen if r.cost_reported_usd is not None and r.cost_catalog_usd is not None]
            assert Decimal(cache["billed_usd"]) == sum(r.cost_reported_usd or 0 for r in both)
            assert Decimal(cache["drift_usd"]) == sum((r.cost_reported_usd or 0) - (r.cost_catalog_usd or 0) for r in both)


def strip_saved(model: dict[str, Any]) -> dict[str, Any]:
    """A /-/cache model line without what today's catalog decides, money as Decimal."""
    out = {k: v for k, v in model.items() if k not in ("model", "saved_usd")}
    for name in ("billed_usd", "catalog_usd", "drift_usd"):
        out[name] = None if out[name] is None else Decimal(out[name])
    return out


def raw_cache(rows: list[UsageRecord]) -> dict[str, dict[str, Any]]:
    """What /-/cache said when it summed raw rows (bar the savings, priced from the catalog)."""
    out: dict[str, dict[str, Any]] = {}
    for model in {r.model for r in rows}:
        mine = [r for r in rows if r.model == model]
        both = [r for r in mine if r.cost_reported_usd is not None and r.cost_catalog_usd is not None]
        inputs, cached = sum(r.input_tokens or 0 for r in mine), sum(r.cached_tokens or 0 for r in mine)
        billed = sum((r.cost_reported_usd or Decimal(0) for r in both), Decimal(0)) if both else None
        listed = sum((r.cost_catalog_usd or Decimal(0) for r in both), Decimal(0)) if both else None
        out[model or "(none)"] = {
            "requests": len(mine), "input_tokens": inputs, "cached_tokens": cached,
            "cache_write_tokens": sum(r.cache_write_tokens or 0 for r in mine),
            "cache_share": round(cached / inputs, 4) if inputs else None, "compared_requests": len(both),
            "billed_usd": billed, "catalog_usd": listed,
            "drift_usd": None if billed is None or listed is None else billed - listed,
        }
    return out


@pytest.mark.parametrize("cost", ["0.0000000000001234", "12345.123456789", "999.999999999999", "8999.999999999999", "0", "7"])
async def test_session_costs_stay_exact_past_twelve_decimals(proxy: Any, cost: str) -> None:
    rows = known_rows()
    rows.append(record(id="odd", session="s1", cost_usd=Decimal(cost)))
    insert(proxy.db_path, rows)
    sessions = await _json(proxy, "/-/sessions?since=30d&limit=100")
    report = await _json(proxy, "/-/report?since=30d&by=session")
    assert {r["group"]: r["cost_usd"] for r in sessions["rows"]} == {r["group"]: r["cost_usd"] for r in report["rows"]}
    cache = await _json(proxy, "/-/cache?since=30d")
    assert cache["billed_usd"]


async def test_the_rest_of_the_endpoints_answer(proxy: Any) -> None:
    insert(proxy.db_path, known_rows())
    assert (await _json(proxy, "/-/budgets")) == {"configured": False, "budgets": []}
    free = await _json(proxy, "/-/free-usage")
    assert free["daily_limit"] == 50
    cache = await _json(proxy, "/-/cache?since=30d")
    assert Decimal(cache["saved_usd"]) > 0 and Decimal(cache["drift_usd"]) > 0
    assert (await _json(proxy, "/-/price-changes"))["changes"] == []
    models = await _json(proxy, "/-/models?search=gpt-4o&limit=5")
    assert 0 < len(models["models"]) <= 5
    estimate = await _json(proxy, "/-/models?input=10000&output=1000&cheapest=3&target=openai/gpt-4o")
    assert estimate["estimate"][0]["model"] == "openai/gpt-4o" and len(estimate["estimate"]) == 4
    whatif = await _json(proxy, "/-/whatif?since=30d&target=openai/gpt-4o-mini")
    assert whatif["rows"]


async def test_page_and_endpoints_send_a_strict_policy(proxy: Any) -> None:
    for path in ("/", "/-/report", "/-/static/app.js", "/-/nope"):
        response = await proxy.client.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe" not in csp and "default-src 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = await (await proxy.client.get("/")).text()
    assert "<script>" not in page and "style=" not in page and "<style" not in page


async def test_static_files_are_a_fixed_list(proxy: Any) -> None:
    assert (await proxy.client.get("/-/static/chart.umd.min.js")).status == 200
    for name in ("../routes.py", "..%2froutes.py", "index.html/../../routes.py", "nope.js"):
        response = await proxy.client.get(f"/-/static/{name}")
        assert response.status == 404


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8787", "127.0.0.1.nip.io"])
async def test_unexpected_host_names_are_refused(proxy: Any, host: str) -> None:
    for path in ("/", "/-/report"):
        response = await proxy.client.get(path, headers={"Host": host})
        assert response.status == 403


@pytest.mark.parametrize("host", ["localhost:8787", "127.0.0.1", "[::1]:8787", "10.1.2.3:8787", "app.localhost"])
async def test_loopback_names_and_ip_literals_are_answered(proxy: Any, host: str) -> None:
    response = await proxy.client.get("/-/budgets", headers={"Host": host})
    assert response.status == 200


async def test_off_loopback_needs_a_token(start_proxy: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("SPEND_UI_TOKEN", "t0k" + "en")
    proxy = await start_proxy(host="0.0.0.0", metrics=MetricsConfig(enabled=False), ui=UiConfig(token_env="SPEND_UI_TOKEN", hosts=("spend.lan",)))
    assert (await proxy.client.get("/-/budgets", headers={"Host": "spend.lan"})).status == 401
    assert (await proxy.client.get("/", headers={"Host": "spend.lan"})).status == 401
    wrong = await proxy.client.get("/-/budgets", headers={"Host": "spend.lan", "Authorization": "Bearer nope"})
    assert wrong.status == 401
    right = await proxy.client.get("/-/budgets", headers={"Host": "spend.lan", "Authorization": "Bearer t0ken"})
    assert right.status == 200
    assert (await proxy.client.get("/-/budgets", headers={"Host": "other.lan", "Authorization": "Bearer t0ken"})).status == 403
    link = await proxy.client.get("/?token=t0ken", headers={"Host": "spend.lan"}, allow_redirects=False)
    assert link.status == 303 and link.headers["Location"] == "/"
    cookie = link.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = await proxy.client.get("/", headers={"Host": "spend.lan"})
    assert page.status == 200


async def test_off_loopback_without_a_token_the_page_is_off(start_proxy: Any) -> None:
    proxy = await start_proxy(host="0.0.0.0", metrics=MetricsConfig(enabled=False))
    response = await proxy.client.get("/-/budgets", headers={"Host": "10.0.0.5"})
    assert response.status == 403
    assert "ui.token_env" in (await response.json())["error"]["message"]


async def test_ui_can_be_turned_off(start_proxy: Any) -> None:
    proxy = await start_proxy(ui=UiConfig(enabled=False))
    insert(proxy.db_path, known_rows())
    response = await proxy.client.get("/-/report")
    assert '"total"' not in await response.text()


def _where_am_i(db: sqlite3.Connection, marker: Path) -> int:
    with marker.open("a") as out:
        out.write("x")
    return os.getpid()


def _write(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO meta VALUES ('a', 'b')")


async def test_reader_runs_in_another_process_read_only_and_coalesces(tmp_path: Path) -> None:
    import asyncio

    from proxy.store.sqlite import prepare
    from proxy.web.routes import Reader

    path = tmp_path / "u.db"
    prepare(path)
    reader = Reader(path, ttl_s=60)
    marker = tmp_path / "calls"
    try:
        pids = await asyncio.gather(*(reader.read("k", _where_am_i, marker) for _ in range(5)))
        assert len(set(pids)) == 1 and pids[0] != os.getpid()
        assert await reader.read("k", _where_am_i, marker) == pids[0]
        assert marker.read_text() == "x"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await reader.read("w", _write)
        # a failed read is not cached: the next one runs again
        with pytest.raises(sqlite3.OperationalError):
            await reader.read("w", _write)
    finally:
        reader.close()


def _collecting(db: sqlite3.Connection) -> bool:
    import gc

    return gc.isenabled()


async def test_a_read_runs_without_the_cyclic_collector_and_restores_it(tmp_path: Path) -> None:
    """A read builds a line object per session (tens of thousands, no cycles): the collector's
    passes over them were a third of /-/report?by=session's CPU. Off during a read, back after."""
    import gc

    from proxy.store.sqlite import prepare
    from proxy.web import routes

    path = tmp_path / "u.db"
    prepare(path)
    # Tests that run `report` in this process leave it off (the CLI turns it off for good).
    was = gc.isenabled()
    gc.enable()
    try:
        assert routes.call(path, _collecting, ()) is False
        assert gc.isenabled()
        with pytest.raises(sqlite3.OperationalError):
            routes.call(path, _write, ())
        assert gc.isenabled()
        gc.disable()
        assert routes.call(path, _collecting, ()) is False
        assert not gc.isenabled()  # off before, off after
    finally:
        if was:
            gc.enable()
    reader = routes.Reader(path, ttl_s=60)
    try:
        assert await reader.read("gc", _collecting) is False
    finally:
        reader.close()


def _die(db: sqlite3.Connection) -> None:
    os._exit(3)


async def test_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    from concurrent.futures.process import BrokenProcessPool

    from proxy.store.sqlite import prepare
    from proxy.web.routes import Reader

    path = tmp_path / "u.db"
    prepare(path)
    reader = Reader(path, ttl_s=60)
    marker = tmp_path / "calls"
    try:
        with pytest.raises(BrokenProcessPool):
            await reader.read("die", _die)
        assert await reader.read("k", _where_am_i, marker) != os.getpid()
    finally:
        reader.close()


def test_ui_config_is_checked() -> None:
    from proxy.config import parse_config
    from proxy.errors import ConfigError

    config = parse_config({"ui": {"token_env": "SPEND_UI_TOKEN", "hosts": ["Spend.LAN"]}})
    assert config.ui == UiConfig(enabled=True, token_env="SPEND_UI_TOKEN", hosts=("spend.lan",))
    assert parse_config({}).ui == UiConfig()
    for raw, words in [
        ({"ui": {"enabled": "yes"}}, "ui.enabled"),
        ({"ui": {"hosts": "spend.lan"}}, "ui.hosts"),
        ({"ui": {"colour": 1}}, "ui.colour: unknown key"),
        ({"ui": []}, "ui: expected a mapping"),
    ]:
        with pytest.raises(ConfigError, match=words):
            parse_config(raw)


def test_a_missing_ui_token_stops_the_start(make_config: Any, monkeypatch: Any) -> None:
    from proxy.errors import ConfigError
    from proxy.server.app import create_app

    monkeypatch.delenv("NO_SUCH_UI_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="ui.token_env: environment variable NO_SUCH_UI_TOKEN is not set"):
        create_app(make_config(ui=UiConfig(token_env="NO_SUCH_UI_TOKEN")))


async def test_managed_mode_proxy_keys_open_the_page(start_proxy: Any, monkeypatch: Any) -> None:
    from proxy.config import KeyAlias

    monkeypatch.setenv("OR_MANAGED", "sk-or-v1-" + "ee" * 20)
    monkeypatch.setenv("TEAM_KEY", "team-" + "key-1")
    proxy = await start_proxy(
        host="0.0.0.0", metrics=MetricsConfig(enabled=False), managed_key_env="OR_MANAGED",
        keys=(KeyAlias(alias="team", key_env="TEAM_KEY"),),
    )
    assert (await proxy.client.get("/-/budgets", headers={"Host": "10.0.0.5"})).status == 401
    ok = await proxy.client.get("/-/budgets", headers={"Host": "10.0.0.5", "Authorization": "Bearer team-key-1"})
    assert ok.status == 200
    # the OpenRouter key itself is not a way in
    upstream_key = await proxy.client.get("/-/budgets", headers={"Host": "10.0.0.5", "Authorization": f"Bearer {'sk-or-v1-' + 'ee' * 20}"})
    assert upstream_key.status == 401


async def test_budgets_equal_the_budgets_command(start_proxy: Any, tmp_path: Path, capsys: Any) -> None:
    import yaml

    from proxy.budgets.spec import parse_budgets

    raw = [
        {"name": "daily", "limit_usd": 1, "period": "day", "scope": "total"},
        {"name": "per-project", "limit_usd": 5, "period": "month", "scope": "project", "action": "warn"},
    ]
    proxy = await start_proxy(budgets=parse_budgets(raw))
    for project in ("acme", "beta", "acme"):
        response = await proxy.client.post(
            "/api/v1/chat/completions", json={"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {KEY}", "X-Spend-Project": project},
        )
        assert response.status == 200
    await proxy.settle()
    page = await _json(proxy, "/-/budgets")
    config = tmp_path / "budgets.yaml"
    config.write_text(yaml.safe_dump({"budgets": raw}))
    assert main(["budgets", "--config", str(config), "--db", str(proxy.db_path), "--format", "json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    fields = ("budget", "scope", "scope_value", "spent_usd", "limit_usd", "share", "window_start", "window_end", "resets_at")
    assert [{k: b[k] for k in fields} for b in page["budgets"]] == [{k: b[k] for k in fields} for b in cli]
    assert len(cli) == 3 and Decimal(cli[0]["spent_usd"]) > 0


@given(st.lists(st.decimals(min_value=0, max_value=Decimal("999.999999999999"), places=12), min_size=1, max_size=30))
@settings(max_examples=200, deadline=None)
def test_sql_money_sums_are_exact(values: list[Decimal]) -> None:
    from proxy.web.reads import _exact_sum, _sum_text

    texts = [format(v.normalize(), "f") if v else "0" for v in values]
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (cost TEXT)")
    db.executemany("INSERT INTO t VALUES (?)", [(t,) for t in texts])
    units, places = db.execute(f"SELECT {_exact_sum('cost')} FROM t").fetchone()
    expected = Decimal(0)
    for text in texts:
        expected += Decimal(text)
    assert _sum_text(units, places) == str(expected)


def _entry(model_id: str, pricing: Any) -> Any:
    from proxy.pricing.catalog import ModelEntry

    return ModelEntry(id=model_id, name=model_id, canonical_slug=None, context_length=None, created=None, pricing=pricing, is_free=False)


@pytest.mark.parametrize("fine", [True, False])
@pytest.mark.parametrize("since", [None, 3, 30])
def test_whatif_from_token_sums_equals_pricing_every_request(tmp_path: Path, since: int | None, fine: bool) -> None:
    """/-/whatif sums tokens in SQL per hour (minute), price version and long-context tier: the
    same rows as pricing each logged request (whatif_rows), with tiers, time-of-day and weekday
    prices, price history changing mid-hour, per-request fees, a discount, 1 h cache writes, web
    search, a variable price, and counts the clamps in price() must see per request. `fine`: some
    logged costs have more than 12 decimals (the logged sums' slower exact path), else none do."""
    import random

    from proxy.pricing.calculator import PriceHistory, logged_request, whatif_rows
    from proxy.pricing.catalog import Catalog, ModelPricing, PriceOverride, load_embedded, pricing_fingerprint
    from proxy.store.sqlite import connect_readonly, prepare
    from proxy.web import reads, routes
    from proxy.web.query import Query

    d = Decimal
    rich = ModelPricing(
        prompt=d("0.000001"), completion=d("0.000002"), request=d("0.001"), web_search=d("0.01"), input_cache_read=d("1E-7"),
        input_cache_write=d("0.00000125"), input_cache_write_1h=d("0.000002"), internal_reasoning=d("0.000003"), discount=d("0.1"),
        overrides=(
            PriceOverride(prices=(("prompt", d("0.000002")),), min_prompt_tokens=200_000),
            PriceOverride(prices=(("prompt", d("0.0000015")), ("completion", d("0.000004"))), min_prompt_tokens=100_000),
            PriceOverride(prices=(("completion", d("0.000001")),), utc_start=130, utc_end=745),
            PriceOverride(prices=(("input_cache_read", d("5E-8")),), utc_days=(5, 6)),
        ),
    )
    plain_price = ModelPricing(prompt=d("0.000003"), completion=d("0.000015"), input_cache_read=d("3E-7"))
    catalog = Catalog([*load_embedded().models, _entry("t/rich", rich), _entry("t/history", plain_price),
                       _entry("t/variable", ModelPricing(prompt=d(0), completion=d(0), variable=True))])
    now = datetime.now(UTC).replace(microsecond=0)
    older = ModelPricing(prompt=d("0.000005"), completion=d("0.00002"))
    path = tmp_path / "u.db"
    prepare(path)
    rng = random.Random(11)
    changes = [now - timedelta(days=9, minutes=17), now - timedelta(days=5, minutes=31, seconds=7), now - timedelta(days=2, minutes=3)]
    # Few hours, many requests each: the hours of the price changes, of the 01:30 time-of-day
    # boundary, and a few more, so requests that price differently share an hour.
    slots = [c.replace(minute=0, second=0) for c in changes] + [
        (now - timedelta(days=n)).replace(hour=hour, minute=0, second=0) for n, hour in ((1, 1), (4, 7), (12, 1), (20, 13), (33, 7))
    ]
    rows = []
    for i in range(400):
        at = rng.choice(slots) + timedelta(minutes=rng.randrange(60), seconds=rng.randrange(60))
        prompt = rng.choice([None, 0, 500, 99_999, 100_000, 100_001, 150_000, 200_000, 200_001, 350_000])
        output = rng.choice([None, 0, 10, 4000])
        rows.append(record(
            id=f"q{i}", started_at=at, finished_at=at, model=rng.choice(["openai/gpt-4o", "t/rich", None]),
            input_tokens=prompt, output_tokens=output, cached_tokens=rng.choice([None, 0, 400, 120_000]),
            cache_write_tokens=rng.choice([None, 0, 64, 90_000]), cache_write_1h_tokens=rng.choice([None, 0, 32, 100_000]),
            reasoning_tokens=rng.choice([None, 0, 5, 5000]), web_search_requests=rng.choice([None, 0, 2]),
            cost_usd=rng.choice([None, d("0.0123"), d("0.000000000000000000000001") if fine else d("0.000000000001"), d("1.5")]),
            cost_catalog_usd=rng.choice([None, d("0.01"), d("0.00000000000001") if fine else d("0.000000000003")]),
            project=rng.choice(["acme", "beta"]),
        ))
    insert(path, rows)
    db = sqlite3.connect(path)
    with db:
        # t/history cost more until a moment inside an hour 2 days ago, and once more 9 days ago.
        db.executemany("INSERT INTO model_prices (model_id, pricing, first_seen_at) VALUES (?, ?, ?)", [
            ("t/history", pricing_fingerprint(older), (now - timedelta(days=60)).isoformat()),
            ("t/history", pricing_fingerprint(plain_price), changes[0].isoformat()),
            ("t/history", pricing_fingerprint(older), changes[1].isoformat()),
            ("t/history", pricing_fingerprint(plain_price), changes[2].isoformat()),
        ])
    db.close()
    start = None if since is None else now - timedelta(days=since)
    # With t/rich (a time-of-day price) requests are summed per minute, without it per hour.
    for targets, query in (
        (("t/rich", "t/history", "t/variable", "anthropic/claude-sonnet-4"), Query(since=start)),
        (("t/history", "anthropic/claude-sonnet-4"), Query(since=start)),
        (("t/rich", "t/history"), Query(since=start, filters=(("project", "acme"),))),
    ):
        got = routes.call(path, reads.whatif, (query, catalog, targets))
        with contextlib.closing(connect_readonly(path)) as reader:
            history = PriceHistory(reads._history(reader))
            where, params = reads._where(query)
            logged = [logged_request(dict(r)) for r in reader.execute(f"SELECT * FROM requests{where} ORDER BY started_at", params)]
        assert got == reads._json_rows(whatif_rows(logged, catalog, targets, None, history))
        assert got[2]["unpriced"] < got[2]["requests"] and got[-1]["cost"] != "0"
