"""Builds dashboards/openrouter-spend.json, the Grafana dashboard, from the panel list below.

Run `python dashboards/build.py` after editing; tests/test_dashboards.py fails when the committed
JSON differs from what this script writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("openrouter-spend.json")
DATASOURCE_UID = "openrouter-spend-prom"  # provisioning/datasources/prometheus.yml
DS = {"type": "prometheus", "uid": "${datasource}"}

# Spend series carry key/project/session/model; most other series only model.
SPEND = '{key=~"$key", project=~"$project", session=~"$session", model=~"$model"}'
MODEL = '{model=~"$model"}'
COST = f"openrouter_proxy_cost_usd_total{SPEND}"


def window_spend(window: str) -> str:
    """Exact spend in the proxy's current day/week/month: a gauge summed by the proxy, not increase()."""
    return f'sum(openrouter_proxy_spend_usd{{window="{window}", {SPEND[1:]}) or vector(0)'


# Seconds left in the current calendar month (UTC, which is what PromQL's date functions use).
MONTH_LEFT = "scalar((days_in_month() - day_of_month()) * 86400 + 86400 - hour() * 3600 - minute() * 60)"

GREEN = {"color": "green", "value": None}


def _steps(*pairs: tuple[str, float]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [GREEN, *({"color": c, "value": v} for c, v in pairs)]}


def _target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False, table: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {
        "refId": ref,
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
    }
    if table:
        t["format"] = "table"
    return t


class Layout:
    """Places panels left to right in rows of 24 grid units."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({
            "type": "row", "title": title, "collapsed": False, "panels": [],
            "id": len(self.panels) + 1, "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
        })
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)


def _panel(kind: str, title: str, description: str, unit: str, targets: list[dict[str, Any]],
           options: dict[str, Any], *, thresholds: dict[str, Any] | None = None, time_from: str | None = None,
           extra_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "thresholds": thresholds or _steps(), "color": {"mode": "thresholds"}}
    defaults.update(extra_defaults or {})
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": targets,
    }
    if time_from:
        p["timeFrom"] = time_from
    return p


REDUCE_LAST = {"calcs": ["lastNotNull"], "fields": "", "values": False}


def stat(title: str, description: str, unit: str, expr: str, *, time_from: str | None = None,
         thresholds: dict[str, Any] | None = None, legend: str = "", decimals: int | None = None) -> dict[str, Any]:
    options = {
        "reduceOptions": REDUCE_LAST, "colorMode": "value", "graphMode": "none", "justifyMode": "auto",
        "orientation": "auto", "textMode": "auto", "wideLayout": True, "showPercentChange": False,
    }
    extra = {"decimals": decimals} if decimals is not None else {}
    return _panel("stat", title, description, unit, [_target(expr, legend, instant=True)], options,
                  thresholds=thresholds, time_from=time_from, extra_defaults=extra)


def gauge(title: str, description: str, unit: str, expr: str, legend: str, *, time_from: str | None = None,
          thresholds: dict[str, Any] | None = None, max_: float = 1) -> dict[str, Any]:
    options = {"reduceOptions": REDUCE_LAST, "orientation": "auto", "showThresholdLabels": False,
               "showThresholdMarkers": True, "minVizHeight": 75, "minVizWidth": 75, "sizing": "auto"}
    return _panel("gauge", title, description, unit, [_target(expr, legend, instant=True)], options,
                  thresholds=thresholds, time_from=time_from, extra_defaults={"min": 0, "max": max_})


def timeseries(title: str, description: str, unit: str, targets: list[tuple[str, str]], *,
               stacked: bool = False) -> dict[str, Any]:
    custom = {
        "drawStyle": "line", "lineWidth": 1, "fillOpacity": 30 if stacked else 0, "showPoints": "never",
        "spanNulls": False, "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
        "axisPlacement": "auto", "axisSoftMin": 0,
    }
    options = {
        "legend": {"displayMode": "table", "placement": "right", "showLegend": True, "calcs": ["mean", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    refs = [_target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(targets)]
    p = _panel("timeseries", title, description, unit, refs, options,
               extra_defaults={"custom": custom, "color": {"mode": "palette-classic"}})
    return p


def bargauge(title: str, description: str, unit: str, expr: str, legend: str) -> dict[str, Any]:
    options = {"reduceOptions": REDUCE_LAST, "displayMode": "gradient", "orientation": "horizontal",
               "showUnfilled": True, "valueMode": "color", "namePlacement": "auto", "sizing": "auto",
               "minVizHeight": 16, "minVizWidth": 8, "maxVizHeight": 300}
    return _panel("bargauge", title, description, unit, [_target(expr, legend, instant=True)], options,
                  extra_defaults={"min": 0, "color": {"mode": "continuous-GrYlRd"}})


def _per_budget(metric: str) -> str:
    # Replicas on one database each export the same shared budget: one series per budget, not per replica.
    return f"max by (job, budget, scope) ({metric})"


def budget_table() -> dict[str, Any]:
    queries = [
        (_per_budget("openrouter_proxy_budget_spent_usd"), "A"),
        (_per_budget("openrouter_proxy_budget_limit_usd"), "B"),
        (_per_budget("openrouter_proxy_budget_projected_usd"), "C"),
    ]
    targets = [_target(q, "", ref, instant=True, table=True) for q, ref in queries]
    p = _panel(
        "table", "Budgets: spent, limit and projection",
        "One row per budget and scope (scope is `total` or the key, project, session or model the budget "
        "applies to). Spent is this window's spend, Projected is where the current burn rate ends the window.",
        "currencyUSD", targets, {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    )
    p["transformations"] = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {
            "excludeByName": {"Time": True, "job": True, "instance": True, "__name__": True},
            "renameByName": {"budget": "Budget", "scope": "Scope", "Value #A": "Spent",
                             "Value #B": "Limit", "Value #C": "Projected at window end"},
        }},
    ]
    return p


def _rate_per_hour(by: str, topk: int | None = None) -> str:
    inner = f"sum by ({by}) (rate({COST}[$__rate_interval]))"
    if topk:
        inner = f"topk({topk}, {inner})"
    return f"{inner} * 3600"


def _quantiles(metric: str, by: str, qs: tuple[float, ...], sel: str = MODEL) -> list[tuple[str, str]]:
    out = []
    for q in qs:
        group = f"le, {by}" if by else "le"
        legend = f"p{int(q * 100)} {{{{{by}}}}}" if by else f"p{int(q * 100)}"
        out.append((f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{sel}[$__rate_interval])))",
                    legend))
    return out


def panels() -> list[dict[str, Any]]:
    L = Layout()
    money_steps = _steps()

    L.row("Spend")
    for title, window, what in (("Spend today", "day", "since midnight"),
                                ("Spend this week", "week", "since Monday"),
                                ("Spend this month", "month", "since the first of the month")):
        L.add(stat(title, f"Dollars spent through the proxy {what} in the proxy's time zone (the windows its "
                   "budgets use), for the selected keys, projects, sessions and models. Summed exactly by the "
                   "proxy, restarts included, so it equals `openrouter-spend report`.", "currencyUSD",
                   window_spend(window), thresholds=money_steps, decimals=2), 4, 4)
    L.add(stat("Burn rate ($/hour)", "Spend per hour averaged over the last hour.", "currencyUSD",
               f"sum(rate({COST}[1h])) * 3600 or vector(0)", decimals=2), 6, 4)
    L.add(stat("Projected spend at month end", "This month's spend so far plus the average burn rate of the last "
               "6 hours continued until the end of the month (UTC).", "currencyUSD",
               f"({window_spend('month')}) + (sum(rate({COST}[6h])) or vector(0)) * {MONTH_LEFT}",
               decimals=2), 6, 4)

    L.row("Budgets")
    L.add(gauge("Budget used (share of limit)", "Spend in each budget's current window as a share of its limit. "
                "Yellow from 80%, red at 100%: budgets with action block then refuse requests with HTTP 402.",
                "percentunit",
                f"{_per_budget('openrouter_proxy_budget_spent_usd')} / {_per_budget('openrouter_proxy_budget_limit_usd')}",
                "{{budget}} · {{scope}}", thresholds=_steps(("yellow", 0.8), ("red", 1)), max_=1), 10, 7)
    L.add(stat("Time until each budget resets", "How long until each budget's window ends and its spend starts "
               "again from zero.", "dtdurations", f"{_per_budget('openrouter_proxy_budget_window_end_timestamp_seconds')} - time()",
               legend="{{budget}} · {{scope}}"), 6, 7)
    L.add(budget_table(), 8, 7)

    L.row("Where the money goes")
    for by, title, what in (("model", "Spend by model", "model"), ("project", "Spend by project", "project"),
                            ("key", "Spend by API key", "API key (its alias, or a fingerprint, never the key)")):
        L.add(timeseries(f"{title} ($/hour)", f"Spend rate per {what}, stacked: the top edge is the total.",
                         "currencyUSD", [(_rate_per_hour(by), f"{{{{{by}}}}}")], stacked=True), 12, 8)
    L.add(timeseries("Top 10 sessions by spend ($/hour)", "Spend rate of the ten most expensive agent sessions "
                     "at each point in time, stacked. Sessions past the label cap are summed as `other`.",
                     "currencyUSD", [(_rate_per_hour("session", 10), "{{session}}")], stacked=True), 12, 8)
    L.add(bargauge("Top 10 sessions by spend (selected range)", "Total dollars per session over the dashboard's "
                   "time range.", "currencyUSD",
                   f"topk(10, sum by (session) (increase({COST}[$__range])))", "{{session}}"), 8, 8)
    L.add(bargauge("Spend by model (selected range)", "Total dollars per model over the dashboard's time range.",
                   "currencyUSD", f"topk(15, sum by (model) (increase({COST}[$__range])))", "{{model}}"), 8, 8)
    L.add(bargauge("Spend by project (selected range)", "Total dollars per project over the dashboard's time "
                   "range.", "currencyUSD", f"topk(15, sum by (project) (increase({COST}[$__range])))",
                   "{{project}}"), 8, 8)

    L.row("Tokens and cache")
    tokens = f"openrouter_proxy_tokens_total{MODEL}"
    L.add(timeseries("Tokens per second by kind", "Input counts every prompt token, cache reads (cached) and "
                     "writes (cache_write) included; output includes reasoning. Not stacked, since kinds overlap.",
                     "suffix: tok/s", [(f"sum by (kind) (rate({tokens}[$__rate_interval]))", "{{kind}}")]), 12, 8)
    ratio = (f'sum(increase(openrouter_proxy_tokens_total{{kind="cached", model=~"$model"}}[$__range])) / '
             f'sum(increase(openrouter_proxy_tokens_total{{kind="input", model=~"$model"}}[$__range]))')
    L.add(stat("Cache hit share of input tokens", "Share of prompt tokens read from the provider's prompt cache "
               "over the selected range; cached tokens cost a fraction of fresh ones.", "percentunit", ratio), 4, 8)
    L.add(stat("Saved by prompt cache", "Dollars the cached prompt tokens would have cost at the full input price, "
               "minus what they cost, over the selected range.", "currencyUSD",
               f"sum(increase(openrouter_proxy_cache_savings_usd_total{MODEL}[$__range])) or vector(0)",
               decimals=2), 4, 8)
    L.add(stat("Reasoning share of output spend", "Share of output dollars spent on reasoning (thinking) tokens "
               "over the selected range.", "percentunit",
               f"sum(increase(openrouter_proxy_reasoning_cost_usd_total{MODEL}[$__range])) / "
               f"sum(increase(openrouter_proxy_output_cost_usd_total{MODEL}[$__range]))"), 4, 8)

    L.row("Requests and errors")
    L.add(timeseries("Requests per second by HTTP status", "Requests answered by the proxy, by status code; "
                     "402 means a budget refused the request.", "reqps",
                     [(f"sum by (status) (rate(openrouter_proxy_requests_total{MODEL}[$__rate_interval]))",
                       "{{status}}")]), 8, 8)
    L.add(timeseries("Upstream error rate by reason", "Failed exchanges with OpenRouter as a share of all "
                     "requests: connect, timeout, http_4xx, http_5xx, stream_error (error inside a stream), reset.",
                     "percentunit",
                     [("sum by (reason) (rate(openrouter_proxy_upstream_errors_total[$__rate_interval])) / on () "
                       "group_left () sum(rate(openrouter_proxy_requests_total[$__rate_interval]))", "{{reason}}")]),
          8, 8)
    L.add(gauge("Free-model requests today (share of daily limit)", "Requests to `:free` models since midnight "
                "against OpenRouter's daily free-model limit (50, or 1000 with credits bought); beyond it "
                "OpenRouter answers 429.", "percentunit",
                "(sum(increase(openrouter_proxy_free_requests_total[$__range])) or vector(0)) / "
                "max(openrouter_proxy_free_daily_limit)", "free requests", time_from="now/d",
                thresholds=_steps(("yellow", 0.8), ("red", 1))), 4, 8)
    L.add(stat("Requests in flight", "Requests being forwarded right now.", "short",
               "sum(openrouter_proxy_in_flight_requests)"), 2, 4)
    L.add(stat("Refused by budgets", "Requests refused with HTTP 402 because a budget was spent, over the "
               "selected range.", "short",
               "sum(increase(openrouter_proxy_budget_blocked_total[$__range])) or vector(0)",
               thresholds=_steps(("red", 1)), decimals=0), 2, 4)

    L.row("Latency")
    L.add(timeseries("Time to first token by model (p50, p95)", "Time from forwarding a request until "
                     "OpenRouter's first response byte: the wait before an agent sees output.", "s",
                     _quantiles("openrouter_proxy_ttfb_seconds", "model", (0.5, 0.95))), 8, 8)
    L.add(timeseries("Request duration by model (p50, p95)", "Time from receiving a request to its last byte, "
                     "streams included.", "s",
                     _quantiles("openrouter_proxy_request_duration_seconds", "model", (0.5, 0.95))), 8, 8)
    L.add(timeseries("Latency the proxy adds (p50, p95, p99)", "Time spent in the proxy itself (budget check, "
                     "header handling), excluding the wait for OpenRouter.", "s",
                     _quantiles("openrouter_proxy_overhead_seconds", "", (0.5, 0.95, 0.99), sel="")), 8, 8)

    L.row("Health of the numbers")
    L.add(stat("Price catalog age", "Time since the OpenRouter model catalog (prices) was last refreshed; red "
               "after a day. Costs OpenRouter does not report are priced from it.", "dtdurations",
               "time() - max(openrouter_proxy_catalog_updated_timestamp_seconds)",
               thresholds=_steps(("red", 86400))), 4, 4)
    L.add(stat("Models in catalog", "Models in the loaded price catalog.", "short",
               "max(openrouter_proxy_catalog_models)"), 4, 4)
    drift = "openrouter_proxy_cost_drift_usd_total"
    L.add(stat("Cost drift: billed minus catalog price", "What OpenRouter billed minus what the catalog price "
               "says, summed over requests differing by more than 1%, over the selected range. Far from $0 means "
               "prices changed or a provider bills differently.", "currencyUSD",
               f'(sum(increase({drift}{{direction="over", model=~"$model"}}[$__range])) or vector(0)) - '
               f'(sum(increase({drift}{{direction="under", model=~"$model"}}[$__range])) or vector(0))',
               decimals=4), 4, 4)
    L.add(stat("Requests with cost drift", "Requests whose billed cost differed from the catalog price by more "
               "than 1%, over the selected range.", "short",
               f"sum(increase(openrouter_proxy_cost_drift_total{MODEL}[$__range])) or vector(0)",
               thresholds=_steps(("yellow", 1)), decimals=0), 4, 4)
    L.add(stat("Dropped usage records", "Usage records lost because the SQLite write queue was full, over the "
               "selected range. Anything above 0 means reports and budgets undercount.", "short",
               "sum(increase(openrouter_proxy_recorder_dropped_total[$__range])) or vector(0)",
               thresholds=_steps(("red", 1)), decimals=0), 4, 4)
    L.add(stat("Records waiting to be written", "Usage records queued for the SQLite writer right now.", "short",
               "sum(openrouter_proxy_recorder_queue_depth)"), 4, 4)
    L.add(timeseries("Gap to OpenRouter's books", "OpenRouter's own spend for the proxy's key (GET /key) minus "
                     "what the log recorded, per UTC window; needs reconcile.interval_minutes. Above $0: spend the "
                     "proxy did not see (traffic around it, lost rows); below: our own prices drifting. "
                     "`openrouter-spend reconcile` explains each line.", "currencyUSD",
                     [('max by (window) (openrouter_proxy_reconcile_gap_usd{window=~"day|week|month"})', "{{window}}")]),
          12, 8)
    return L.panels


def _var(name: str, label: str, metric: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": f"label_values({metric}, {name})", "refId": f"{name}-values", "qryType": 1},
        "definition": f"label_values({metric}, {name})",
        "multi": True, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2, "sort": 1, "regex": "", "options": [], "hide": 0,
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": "openrouter-spend",
        "title": "OpenRouter spend",
        "description": "What coding agents spend through openrouter-spend: money, budgets, tokens, errors, latency.",
        "tags": ["openrouter", "llm", "cost"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {"list": []},
        "templating": {"list": [
            {
                "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                "current": {"selected": True, "text": "Prometheus", "value": DATASOURCE_UID},
                "regex": "", "hide": 0, "options": [], "refresh": 1,
            },
            _var("key", "API key", "openrouter_proxy_cost_usd_total"),
            _var("project", "Project", "openrouter_proxy_cost_usd_total"),
            _var("session", "Session", "openrouter_proxy_cost_usd_total"),
            _var("model", "Model", "openrouter_proxy_requests_total"),
        ]},
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT}\n")
