"""The monitoring stack live: fake OpenRouter -> the proxy as its own process -> real Prometheus with the
shipped rules -> real Alertmanager -> a webhook, all on loopback.

Every dashboard and rule expression must return data after mixed traffic, a block budget driven over its
limit must reach the webhook as OpenRouterBudgetSpent, the scraped counters must equal SQLite's sums, and
the spend panels must show SQLite's numbers: today/week/month to the cent, by model/project/session
over the test window within 1%.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer


from proxy.budgets.spec import BudgetSpec, window

from . import stack
from .fake_openrouter import KEYS

KEY_A = "sk-or-v1-stack-" + "ab" * 24  # aliased `default` by config/proxy.docker.yaml (OPENROUTER_API_KEY)
KEY_B = "sk-or-v1-stack-" + "cd" * 24  # no alias: its metrics label is a salted fingerprint
METRICS_TOKEN = "stack-e2e-metrics-token"
GPT = "openai/gpt-4o"
SONNET = "anthropic/claude-sonnet-4.5"
LLAMA = "meta-llama/llama-3.1-8b-instruct"
FREE = "liquid/lfm-2.5-2.6b:free"  # a `:free` model in the embedded catalog
GPT_CATALOG_COST = Decimal("0.00575")  # tests/fake_openrouter.py's usage at the catalog price of gpt-4o

# The selection a person might make in the dashboard's drop-downs; the traffic below fills every panel for it.
SELECTION = {"key": "default", "project": "acme", "session": "s-1", "model": f"({GPT}|{SONNET})"}

# Rules whose condition no test run can make true, with the part of the expression that must still return
# data (proving it parses and names series the proxy exports). Their firing is covered by promtool in
# config/alerts.rules.test.yml.
UNREACHABLE_RULES = {
    # The recorder's queue holds 100,000 records (proxy/recorder.py) and the bound is not configurable, so
    # dropping one needs 100,000 requests queued behind a locked database: minutes of traffic.
    "OpenRouterRecordsDropped": "increase(openrouter_proxy_recorder_dropped_total[10m])",
    # The proxy stamps the catalog with the time it loaded it, the embedded snapshot included
    # (proxy/refresh.py CatalogHolder), so the catalog is never a day old within a run.
    "OpenRouterCatalogStale": "time() - openrouter_proxy_catalog_updated_timestamp_seconds",
}
# Proven last, by stopping the proxy: up == 0 only has data once its target is down.
AFTER_STOP_RULES = {"OpenRouterProxyDown"}

OR_ZERO = re.compile(r"\s+or\s+vector\(0\)")
METRIC_RE = re.compile(r"\bopenrouter_proxy_[a-z0-9_]+")


@dataclass(frozen=True, slots=True)
class Call:
    path: str
    model: str
    stream: bool = False
    project: str | None = None
    session: str | None = None
    key: str = KEY_A
    fake: str = ""
    cost: str | None = None
    status: int = 200


def body(call: Call) -> dict[str, Any]:
    if call.path.endswith("/messages"):
        return {"model": call.model, "max_tokens": 64, "stream": call.stream,
                "messages": [{"role": "user", "content": "hi"}]}
    if call.path.endswith("/responses"):
        return {"model": call.model, "input": "hi", "stream": call.stream}
    if call.path.endswith("/embeddings"):
        return {"model": call.model, "input": "hi"}
    return {"model": call.model, "stream": call.stream, "messages": [{"role": "user", "content": "hi"}]}


CHAT = "/api/v1/chat/completions"
# One round of what coding agents send: every API shape, streamed and not, several models, keys,
# projects and sessions, a free model, billed costs above and below the catalog price, a cost only the
# catalog knows, and failures of every kind. Non-4xx upstream failures are 4 of 17 requests, over the
# 10% of OpenRouterUpstreamErrorRateHigh.
MIXED = [
    Call(CHAT, GPT, project="acme", session="s-1"),
    Call(CHAT, SONNET, stream=True, project="acme", session="s-2"),
    Call("/api/v1/messages", SONNET, stream=True, project="acme", session="s-2", key=KEY_B),
    Call("/api/v1/messages", SONNET, project="acme", session="s-1"),
    Call("/api/v1/responses", GPT, project="tools", session="s-3", key=KEY_B),
    Call("/api/v1/responses", LLAMA, stream=True, project="tools", session="s-3"),
    Call("/p/webapp/api/v1/chat/completions", LLAMA, stream=True, session="s-4"),  # project from the URL
    Call("/api/v1/embeddings", "openai/text-embedding-3-small", project="tools"),
    Call(CHAT, FREE, project="acme", session="s-1", cost="0"),
    Call(CHAT, GPT, project="acme", session="s-1", cost="0.02"),  # billed above the catalog price
    Call(CHAT, GPT, stream=True, project="acme", session="s-1", cost="0.001"),  # and below it
    Call(CHAT, LLAMA, project="tools", fake="no-cost"),  # priced from the catalog
    Call(CHAT, GPT, project="acme", session="s-2", fake="error500", status=500),
    Call(CHAT, GPT, project="acme", session="s-2", fake="error429", status=429),
    Call(CHAT, GPT, stream=True, project="acme", session="s-1", fake="drop"),  # cost back-filled
    Call(CHAT, SONNET, stream=True, project="tools", session="s-3", fake="midstream-error"),
    Call("/api/v1/messages", SONNET, stream=True, project="tools", key=KEY_B, fake="midstream-error"),
]
# $0.003 per round into the warn-only budget `watched` (limit $0.01, warning at 50%): two rounds leave it at
# 60%, so OpenRouterBudgetWarning and, early in its day, OpenRouterBudgetBurnRate have data.
WATCHED = Call(CHAT, GPT, project="watched", session="s-5", cost="0.003")
# $0.004 each into the block budget `capped` (limit $0.01): 40%, 80%, 120%, then refusals.
CAPPED = Call(CHAT, GPT, stream=True, project="capped", session="s-6", cost="0.004")


def early_morning_zone(now: datetime) -> str:
    """A fixed-offset zone where it is now between 01:00 and 03:00.

    A day budget then projects 8-24 times its spend to the window's end, whenever the test runs, so a
    budget at 60% is always projected past its limit.
    """
    offset = (1 - now.hour) % 24
    if offset > 14:
        offset -= 24
    # POSIX sign convention: Etc/GMT-3 is three hours ahead of UTC.
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"


def proxy_config(now: datetime) -> dict[str, Any]:
    """config/proxy.docker.yaml (the config docker-compose runs) with the test's budgets and a quick shutdown."""
    cfg: dict[str, Any] = yaml.safe_load((stack.CONFIG / "proxy.docker.yaml").read_text())
    cfg.pop("db")
    cfg["timezone"] = early_morning_zone(now)
    cfg["shutdown_grace_s"] = 2
    cfg["catalog"] = {"refresh_hours": 0}  # the embedded snapshot; the fake's listing is a trimmed fixture
    # Compare with the fake's books every 3 s, so the reconcile gauge, panel and rule have data.
    cfg["reconcile"] = {"interval_minutes": 0.05, "key_env": "OPENROUTER_API_KEY"}
    cfg["budgets"] = [
        *cfg["budgets"],
        {"name": "watched", "limit_usd": 0.01, "period": "day", "scope": "project", "match": {"project": "watched"},
         "warn_at": [0.5], "action": "warn"},
        {"name": "capped", "limit_usd": 0.01, "period": "day", "scope": "project", "match": {"project": "capped"},
         "warn_at": [0.5, 0.8], "action": "block"},
    ]
    return cfg


async def send(session: aiohttp.ClientSession, base: str, call: Call) -> int:
    headers = {"Authorization": f"Bearer {call.key}"}
    if call.project:
        headers["X-Spend-Project"] = call.project
    if call.session:
        headers["X-Spend-Session"] = call.session
    if call.fake:
        headers["X-Fake"] = call.fake
    if call.cost is not None:
        headers["X-Fake-Cost"] = call.cost
    async with session.post(base + call.path, json=body(call), headers=headers) as response:
        try:
            await response.read()
        except aiohttp.ClientPayloadError:
            pass  # the `drop` stream is cut on purpose
        return response.status


async def send_round(session: aiohttp.ClientSession, base: str) -> None:
    statuses = [await send(session, base, call) for call in [*MIXED, WATCHED]]
    assert statuses == [call.status for call in [*MIXED, WATCHED]]


def bad_value(result: list[dict[str, Any]]) -> bool:
    """No series, or only NaN/Inf: a division by nothing, or a quantile of an empty histogram."""
    return not result or all(not math.isfinite(float(r["value"][1])) for r in result)


async def failing(prom: stack.Prometheus, queries: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(what, query, why) for each query without finite data."""
    out = []
    for what, q in queries:
        try:
            result = await prom.query(q)
        except AssertionError as e:
            out.append((what, q, str(e)))
            continue
        if bad_value(result):
            out.append((what, q, f"no data: {result}"))
    return out


async def all_return_data(prom: stack.Prometheus, queries: list[tuple[str, str]], timeout: float) -> None:
    """Waits (rates need two scrapes, budget gauges are published every 5 s) until every query has data."""
    left = queries
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        bad = await failing(prom, left)
        if not bad:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("queries without data:\n" + "\n".join(f"  {w}: {q}\n    -> {why}" for w, q, why in bad))
        left = [(w, q) for w, q, _ in bad]
        await asyncio.sleep(0.5)


def dashboard_queries() -> list[tuple[str, str]]:
    """Each panel query with every variable at All and with SELECTION, each also without its `or vector(0)`
    fallback, so a zero fallback cannot hide a series that never appears."""
    dashboard = json.loads((stack.ROOT / "dashboards" / "openrouter-spend.json").read_text())
    out = []
    for title, expr in stack.dashboard_exprs(dashboard):
        for label, variables in (("All", None), ("selection", SELECTION)):
            q = stack.substitute(expr, variables)
            out.append((f"panel {title!r} ({label})", q))
            if OR_ZERO.search(q):
                out.append((f"panel {title!r} ({label}, no zero fallback)", OR_ZERO.sub("", q)))
    return out


def rule_queries() -> list[tuple[str, str]]:
    rules = dict(stack.rule_exprs())
    assert set(UNREACHABLE_RULES) | AFTER_STOP_RULES <= set(rules)
    out = []
    for name, expr in rules.items():
        if name in AFTER_STOP_RULES:
            continue
        if name in UNREACHABLE_RULES:
            part = UNREACHABLE_RULES[name]
            assert part in " ".join(expr.split()), f"{name}: {part!r} is no longer part of its expression"
            out.append((f"rule {name} (without its threshold)", part))
        else:
            out.append((f"rule {name}", expr))
    return out


async def template_variable_values(prom: stack.Prometheus) -> dict[str, set[str]]:
    dashboard = json.loads((stack.ROOT / "dashboards" / "openrouter-spend.json").read_text())
    values = {}
    for v in dashboard["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((\w+), (\w+)\)", v["definition"])
        assert m, v["definition"]
        metric, label = m.groups()
        values[v["name"]] = set(await prom.api(f"label/{label}/values", **{"match[]": metric}))
    return values


# -- SQLite against Prometheus ----------------------------------------------------------------------


def sqlite_sums(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT status, COALESCE(model, model_requested), COALESCE(key_alias, key_fingerprint), project, "
            "session, cost_usd, input_tokens, output_tokens, cached_tokens, reasoning_tokens FROM requests"
        ).fetchall()
    finally:
        conn.close()
    by_status: dict[str, int] = {}
    cost_by: dict[str, dict[str, Decimal]] = {"model": {}, "key": {}, "project": {}, "session": {}}
    tokens = {"input": 0, "output": 0, "cached": 0, "reasoning": 0}
    total = Decimal(0)
    for status, model, key, project, session, cost, inp, out, cached, reasoning in rows:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
        c = Decimal(cost) if cost is not None else Decimal(0)
        total += c
        if c:
            for label, value in (("model", model), ("key", key), ("project", project or "none"),
                                 ("session", session or "none")):
                cost_by[label][value] = cost_by[label].get(value, Decimal(0)) + c
        for kind, n in (("input", inp), ("output", out), ("cached", cached), ("reasoning", reasoning)):
            tokens[kind] += n or 0
    return {"requests": len(rows), "by_status": by_status, "cost": total, "cost_by": cost_by, "tokens": tokens}


async def prometheus_sums(prom: stack.Prometheus) -> dict[str, Any]:
    async def by(expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in await prom.query(expr)}

    async def one(expr: str) -> float:
        result = await prom.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    return {
        "requests": await one("sum(openrouter_proxy_requests_total)"),
        "by_status": await by("sum by (status) (openrouter_proxy_requests_total)", "status"),
        "cost": await one("sum(openrouter_proxy_cost_usd_total)"),
        "cost_by": {label: await by(f"sum by ({label}) (openrouter_proxy_cost_usd_total)", label)
                    for label in ("model", "key", "project", "session")},
        "tokens": await by("sum by (kind) (openrouter_proxy_tokens_total)", "kind"),
    }


def sums_differ(sql: dict[str, Any], prom: dict[str, Any]) -> list[str]:
    def close(a: Decimal | int, b: float) -> bool:
        return abs(float(a) - b) <= 1e-9 + 1e-9 * abs(b)

    diffs = []
    if sql["requests"] != prom["requests"]:
        diffs.append(f"requests: SQLite {sql['requests']} vs Prometheus {prom['requests']}")
    if {k: float(v) for k, v in sql["by_status"].items()} != prom["by_status"]:
        diffs.append(f"requests by status: SQLite {sql['by_status']} vs Prometheus {prom['by_status']}")
    if not close(sql["cost"], prom["cost"]):
        diffs.append(f"cost: SQLite {sql['cost']} vs Prometheus {prom['cost']}")
    for label, sql_by in sql["cost_by"].items():
        prom_by = prom["cost_by"][label]
        if set(sql_by) != set(prom_by) or not all(close(sql_by[k], prom_by[k]) for k in sql_by):
            diffs.append(f"cost by {label}: SQLite {sql_by} vs Prometheus {prom_by}")
    for kind, n in sql["tokens"].items():
        scraped = prom["tokens"].get(kind, 0.0)
        if scraped != n:
            diffs.append(f"{kind} tokens: SQLite {n} vs Prometheus {scraped}")
    return diffs


async def eventually_equal(proxy: stack.ProxyProcess, prom: stack.Prometheus, timeout: float) -> dict[str, Any]:
    """Waits for the writer, the /generation back-fill and a scrape to catch up, then compares."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        sql = sqlite_sums(proxy.db)
        diffs = sums_differ(sql, await prometheus_sums(prom))
        if not diffs:
            return sql
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("Prometheus' counters differ from SQLite:\n  " + "\n  ".join(diffs))
        await asyncio.sleep(0.5)


# -- the dashboard's numbers against SQLite (issue 12) ---------------------------------------------

WINDOW_PANELS = {"day": "Spend today", "week": "Spend this week", "month": "Spend this month"}
# Panel title -> the label its series are by.
RANGE_PANELS = {"Spend by model (selected range)": "model", "Spend by project (selected range)": "project",
                "Top 10 sessions by spend (selected range)": "session"}


def panel_expr(title: str) -> str:
    dashboard = json.loads((stack.ROOT / "dashboards" / "openrouter-spend.json").read_text())
    (expr,) = [e for t, e in stack.dashboard_exprs(dashboard) if t == title]
    return expr


def sqlite_window_spend(db: Path, tz: str, now: datetime,
                        selection: dict[str, str] | None = None) -> dict[str, Decimal]:
    """Spend per calendar window (in the proxy's time zone, as budgets count it) straight from the rows,
    optionally only rows matching the dashboard selection (regexes, as Grafana sends them)."""
    starts = {p: window(BudgetSpec("w", Decimal(1), period=p), now, ZoneInfo(tz))[0] for p in WINDOW_PANELS}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT started_at, cost_usd, COALESCE(model, model_requested), COALESCE(key_alias, key_fingerprint), "
            "project, session FROM requests WHERE cost_usd IS NOT NULL"
        ).fetchall()
    finally:
        conn.close()
    out = {p: Decimal(0) for p in WINDOW_PANELS}
    for started_at, cost, model, key, project, session in rows:
        values = {"model": model, "key": key, "project": project or "none", "session": session or "none"}
        if selection and not all(re.fullmatch(rx, values[label]) for label, rx in selection.items()):
            continue
        at = datetime.fromisoformat(started_at)
        for period, start in starts.items():
            if at >= start:
                out[period] += Decimal(cost)
    return out


async def check_window_panels(prom: stack.Prometheus, proxy: stack.ProxyProcess, tz: str) -> None:
    """"Spend today / this week / this month" equal SQLite's sums to the cent, for All and for a selection."""
    for variables in (None, SELECTION):
        want = sqlite_window_spend(proxy.db, tz, datetime.now(UTC), variables)
        got = {p: sum(Decimal(r["value"][1]) for r in
                      await prom.query(stack.substitute(panel_expr(title), variables)))
               for p, title in WINDOW_PANELS.items()}
        assert all(w > 0 for w in want.values()), want
        assert {p: round(v, 2) for p, v in got.items()} == {p: round(v, 2) for p, v in want.items()}, \
            (variables, got, want)
        assert all(abs(got[p] - want[p]) < Decimal("1e-9") for p in want), (variables, got, want)


async def check_range_panels(prom: stack.Prometheus, sql: dict[str, Any], since: float) -> None:
    """The by-model / by-project / by-session panels over the test window are within 1% of SQLite's sums.

    Evaluated at the last scrape's timestamp: increase() extrapolates a series to the end of the range when
    the last sample is older than that, which no exporter can help; at a scrape's own time it has nothing
    to extrapolate, so what remains is what the exporter shows Prometheus."""
    (last,) = await prom.query("timestamp(openrouter_proxy_build_info)")
    at = float(last["value"][1])
    range_ = f"{math.ceil(at - since) + 1}s"
    for title, label in RANGE_PANELS.items():
        result = await prom.query(stack.substitute(panel_expr(title), range_=range_), at=at)
        got = {r["metric"][label]: Decimal(r["value"][1]) for r in result}
        want = sql["cost_by"][label]
        assert set(got) == set(want), (title, got, want)
        off = {k: (got[k], want[k]) for k in want if abs(got[k] - want[k]) > want[k] / 100}
        assert not off, f"{title}: Prometheus vs SQLite differ by more than 1%: {off}"


# -- helpers ----------------------------------------------------------------------------------------


async def hold_write_lock(db: Path, seconds: float, during: Callable[[], Awaitable[None]]) -> None:
    """Holds SQLite's write lock longer than the proxy's busy_timeout (5 s) while `during` runs, so the
    writer fails, counts a write error and retries once the lock is gone."""
    conn = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        await asyncio.gather(during(), asyncio.sleep(seconds))
        conn.execute("ROLLBACK")
    finally:
        conn.close()


async def next_alert(received: asyncio.Queue[dict[str, Any]], name: str, budget: str,
                     timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first webhook payload with `name` firing for `budget`, and that alert."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        try:
            payload = await asyncio.wait_for(received.get(), max(left, 0.01))
        except TimeoutError:
            raise AssertionError(f"no {name} for budget {budget} at the webhook within {timeout}s") from None
        for alert in payload["alerts"]:
            labels = alert["labels"]
            if alert["status"] == "firing" and labels["alertname"] == name and labels.get("budget") == budget:
                return payload, alert


def drain(received: asyncio.Queue[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    while not received.empty():
        out.append(received.get_nowait())
    return out


# -- the test ---------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_stack_end_to_end(upstream: TestServer, aiohttp_server: Any, tmp_path: Path) -> None:
    stack.require_binaries("prometheus", "alertmanager")
    receiver_app, received = stack.webhook_receiver()
    receiver = await aiohttp_server(receiver_app, host="127.0.0.1")
    port = stack.free_port()
    env = {"OPENROUTER_API_KEY": KEY_A, "OPENROUTER_SPEND_METRICS_TOKEN": METRICS_TOKEN}
    upstream.app[KEYS].add(KEY_A)  # so GET /key answers the proxy's periodic reconcile

    async with stack.alertmanager(tmp_path / "am", f"http://127.0.0.1:{receiver.port}/hook") as am, \
            stack.prometheus(tmp_path / "prom", [f"127.0.0.1:{port}"], token=METRICS_TOKEN,
                             alertmanager=am) as prom:
        config = proxy_config(datetime.now(UTC))
        proxy_cm = stack.proxy_process(tmp_path / "proxy", config, port=port,
                                       upstream=str(upstream.make_url("/api/v1")), env=env)
        async with proxy_cm as proxy, aiohttp.ClientSession() as client:
            try:
                await prom.wait_for_targets_up()  # with the bearer token from the metrics secret
                # Counters must be scraped before the traffic, or increase() has no start to count from.
                await prom.wait_for_samples("openrouter_proxy_build_info")
                await prom.wait_for_samples("openrouter_proxy_recorder_write_errors_total == 0")
                # Every panel's range starts here, before any series but build_info exists.
                (first,) = await prom.query("timestamp(openrouter_proxy_build_info)")
                since = float(first["value"][1])

                await send_round(client, proxy.url)
                await prom.wait_for_samples(f"sum(openrouter_proxy_requests_total) >= {len(MIXED) + 1}")
                await prom.wait_for_samples("openrouter_proxy_reconcile_gap_usd")
                # The second round runs while SQLite is locked: rows queue up, the writer fails (a write
                # error) and retries. Its CAPPED calls below create new series after Prometheus' scrapes.
                await hold_write_lock(proxy.db, 6.0, lambda: send_round(client, proxy.url))

                early = drain(received)
                assert not [a for p in early for a in p["alerts"]
                            if a["labels"]["alertname"] == "OpenRouterBudgetSpent"], early
                statuses = [await send(client, proxy.url, CAPPED) for _ in range(5)]
                assert statuses == [200, 200, 200, 402, 402]

                # Every panel and rule expression, against the real Prometheus.
                await all_return_data(prom, dashboard_queries() + rule_queries(), timeout=25)
                variables = await template_variable_values(prom)
                for name, value in SELECTION.items():
                    wanted = set(value.strip("()").split("|"))
                    assert wanted <= variables[name], (name, variables[name])
                assert {"acme", "tools", "webapp", "watched", "capped"} <= variables["project"]
                assert len(variables["key"]) == 2 and "default" in variables["key"]
                assert FREE in variables["model"]
                firing = {(a["labels"]["alertname"], a["labels"].get("budget")) for a in await prom.alerts()}
                assert ("OpenRouterBudgetWarning", "watched") in firing
                assert ("OpenRouterRecorderWriteErrors", None) in firing

                # The over-budget alert, delivered by Alertmanager to the webhook.
                payload, alert = await next_alert(received, "OpenRouterBudgetSpent", "capped", timeout=20)
                assert payload["receiver"] == "webhook" and payload["status"] == "firing"
                assert alert["labels"] == {
                    "alertname": "OpenRouterBudgetSpent", "budget": "capped", "scope": "capped",
                    # No instance: the rule takes max() over replicas, so N replicas sharing the
                    # budget raise one alert, not N.
                    "severity": "critical", "job": "openrouter-spend",
                }
                assert alert["annotations"]["summary"] == "Budget capped (capped) is spent: $0.01"
                assert payload["groupLabels"] == {"alertname": "OpenRouterBudgetSpent", "budget": "capped",
                                                  "scope": "capped"}

                # Issue 4: the counters Prometheus scraped equal the sums in SQLite.
                sql = await eventually_equal(proxy, prom, timeout=15)
                assert sql["requests"] == 2 * (len(MIXED) + 1) + 5
                assert sql["by_status"] == {"200": 2 * (len(MIXED) + 1 - 2) + 3, "500": 2, "429": 2, "402": 2}
                # Issue 12: what the dashboard shows equals SQLite.
                await check_window_panels(prom, proxy, config["timezone"])
                await check_range_panels(prom, sql, since)
                # Both rounds' billed costs, the back-filled drops included.
                assert sql["cost_by"]["project"]["capped"] == Decimal("0.012")
                assert sql["cost_by"]["project"]["watched"] == Decimal("0.006")
                assert sql["cost_by"]["model"][GPT] > 2 * (Decimal("0.02") + Decimal("0.001") + GPT_CATALOG_COST)
                spent = await prom.query('openrouter_proxy_budget_spent_usd{budget="capped"}')
                assert [float(r["value"][1]) for r in spent] == [0.012]
            except BaseException:
                print(f"--- proxy log ---\n{proxy.log_tail()}")
                raise
        assert proxy.proc.returncode == 0, f"the proxy did not exit cleanly on SIGTERM:\n{proxy.log_tail()}"

        # The proxy is gone: OpenRouterProxyDown's expression now has data.
        (down,) = [expr for name, expr in stack.rule_exprs() if name == "OpenRouterProxyDown"]
        result = await prom.wait_for_samples(down, timeout=10)
        assert result[0]["metric"]["instance"] == proxy.target
