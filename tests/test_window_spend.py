"""WindowSpend: exact spend today / this week / this month for the dashboard's stat panels (issue 12)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry

from proxy.window_spend import OTHER, WindowSpend

BERLIN = ZoneInfo("Europe/Berlin")
# Wednesday 2026-11-04 09:00 in Berlin (UTC+1): the week began Monday 2026-11-02, the month on the 1st.
NOW = datetime(2026, 11, 4, 9, 0, tzinfo=BERLIN)
A = ("openai/gpt-4o", "laptop", "acme", "s-1")
B = ("anthropic/claude-sonnet-4.5", "laptop", "tools", "s-2")


class Clock:
    def __init__(self, at: datetime) -> None:
        self.t = at.timestamp()

    def __call__(self) -> float:
        return self.t


def gauge(reg: CollectorRegistry, window: str, labels: tuple[str, ...]) -> float | None:
    names = dict(zip(("model", "key", "project", "session"), labels, strict=True))
    return reg.get_sample_value("x_spend_usd", {"window": window, **names})


def spend(clock: Clock, reg: CollectorRegistry | None = None, **kw: Any) -> WindowSpend:
    return WindowSpend(reg, "x_spend_usd", "doc", BERLIN, clock=clock, **kw)


def test_each_request_counts_in_the_windows_its_start_falls_in() -> None:
    reg = CollectorRegistry()
    w = spend(Clock(NOW), reg)
    w.add(A, Decimal("0.10"), NOW - timedelta(hours=8))  # 01:00 today
    w.add(A, Decimal("0.02"), datetime(2026, 11, 3, 23, 59, tzinfo=BERLIN))  # yesterday, this week
    w.add(B, Decimal("0.003"), datetime(2026, 11, 1, 12, tzinfo=BERLIN))  # last week, this month
    w.add(B, Decimal("5"), datetime(2026, 10, 31, 23, 59, tzinfo=BERLIN))  # last month
    w.add(A, Decimal("0.0001"), NOW)
    assert w.totals("day") == {A: Decimal("0.1001")}
    assert w.totals("week") == {A: Decimal("0.1201")}
    assert w.totals("month") == {A: Decimal("0.1201"), B: Decimal("0.003")}
    assert gauge(reg, "day", A) == 0.1001 and gauge(reg, "day", B) is None
    assert gauge(reg, "month", B) == 0.003


def test_windows_roll_over_at_midnight_in_the_time_zone_even_without_traffic() -> None:
    start = datetime(2026, 11, 30, 23, 30, tzinfo=BERLIN)  # a Monday, the month's last day
    clock = Clock(start)
    reg = CollectorRegistry()
    w = spend(clock, reg)
    w.add(A, Decimal("1"), start)
    clock.t = datetime(2026, 11, 30, 23, 59, 59, tzinfo=BERLIN).timestamp()
    assert gauge(reg, "day", A) == 1.0
    clock.t = datetime(2026, 12, 1, 0, 0, tzinfo=BERLIN).timestamp()  # 23:00 UTC: midnight in Berlin
    assert gauge(reg, "day", A) is None and gauge(reg, "month", A) is None
    assert gauge(reg, "week", A) == 1.0  # Tuesday: the same week
    # A request that started before midnight and ended after it counts for the day it started.
    w.add(B, Decimal("2"), datetime(2026, 11, 30, 23, 50, tzinfo=BERLIN))
    assert w.totals("day") == {} and w.totals("week") == {A: Decimal("1"), B: Decimal("2")}


def test_a_record_from_a_later_window_rolls_the_windows_first() -> None:
    clock = Clock(NOW)
    w = spend(clock)
    w.add(A, Decimal("1"), NOW)
    w.add(A, Decimal("2"), NOW + timedelta(days=1))  # the clock lags; the record does not
    assert w.totals("day") == {A: Decimal("2")} and w.totals("week") == {A: Decimal("3")}


def test_requests_observed_out_of_order_across_midnight_and_no_unbounded_backlog() -> None:
    clock = Clock(datetime(2026, 12, 1, 0, 5, tzinfo=BERLIN))
    w = spend(clock)
    w.add(A, Decimal("1"), datetime(2026, 12, 1, 0, 1, tzinfo=BERLIN))
    w.add(A, Decimal("2"), datetime(2026, 11, 30, 23, 59, tzinfo=BERLIN))  # a long one, finished later
    assert w.totals("day") == {A: Decimal("1")} and w.totals("week") == {A: Decimal("3")}
    for _ in range(5000):  # nobody scrapes: the pending requests are summed in batches anyway
        w.add(B, Decimal("0.001"), datetime(2026, 12, 1, 0, 2, tzinfo=BERLIN))
    assert len(w._pending) < 1024
    assert w.totals("day")[B] == Decimal("5")


def test_label_sets_are_capped_and_folded_without_losing_a_cent() -> None:
    w = spend(Clock(NOW), cap=2)
    for i in range(20):
        w.add((f"m{i % 5}", "k", "p", f"s{i}"), Decimal("0.01"), NOW)
    day = w.totals("day")
    assert sum(day.values()) == Decimal("0.20")
    assert len(day) <= 2 * 2 + 1
    assert ("m0", "k", "p", "s0") in day and ("m2", "k", "p", OTHER) in day and (OTHER, OTHER, OTHER, OTHER) in day


def test_load_seeds_sums_from_the_log_for_windows_still_current() -> None:
    clock = Clock(NOW)
    w = spend(clock)
    starts = w.starts
    assert starts == (datetime(2026, 11, 3, 23, tzinfo=UTC), datetime(2026, 11, 1, 23, tzinfo=UTC),
                      datetime(2026, 10, 31, 23, tzinfo=UTC))  # midnights in Berlin: today, Monday, the 1st
    w.load([(A, (True, True, True), Decimal("0.5")), (B, (False, False, True), Decimal("0.25")),
            (B, (False, False, False), Decimal("9"))], starts)
    assert w.totals("day") == {A: Decimal("0.5")} and w.totals("month") == {A: Decimal("0.5"), B: Decimal("0.25")}
    # The day ended between reading `starts` and loading: only the week and month take the sums.
    late = spend(clock)
    clock.t = datetime(2026, 11, 5, 0, 1, tzinfo=BERLIN).timestamp()
    late.load([(A, (True, True, True), Decimal("0.5"))], starts)
    assert late.totals("day") == {} and late.totals("week") == {A: Decimal("0.5")}
    # On Tuesday December 1st the week began on Monday November 30th, before the month did.
    clock.t = datetime(2026, 12, 1, 9, tzinfo=BERLIN).timestamp()
    assert w.starts[1] == datetime(2026, 11, 29, 23, tzinfo=UTC) < w.starts[2]


# -- fed by Metrics, seeded from SQLite on start ------------------------------------------------------

KEY = "sk-or-v1-window-" + "ab" * 20


def _day_by_session(reg: CollectorRegistry) -> dict[str, float]:
    return {s.labels["session"]: s.value for m in reg.collect() for s in m.samples
            if s.name == "openrouter_proxy_spend_usd" and s.labels["window"] == "day"}


def test_metrics_observe_and_backfill_feed_the_windows() -> None:
    from proxy.metrics import Metrics
    from tests.test_metrics import rec

    reg = CollectorRegistry()
    m = Metrics(reg)
    now = datetime.now(UTC)
    m.observe(rec(started_at=now, session="s-new", cost_usd=Decimal("0.01")))
    m.observe(rec(started_at=now, session="s-free", cost_usd=Decimal("0")))
    first = rec(started_at=now, session="s-late", cost_usd=None)
    m.observe(first)
    m.observe_backfill(first, rec(started_at=now, session="s-late", cost_usd=Decimal("0.02")))
    assert _day_by_session(reg) == {"s-new": 0.01, "s-late": 0.02}
    labels = {"window": "month", "model": "anthropic/claude-sonnet-4", "key": "fp-abc", "project": "acme",
              "session": "s-new"}
    assert reg.get_sample_value("openrouter_proxy_spend_usd", labels) == 0.01


async def test_spend_by_window_sums_the_log_per_label_set_and_window(store: Any) -> None:
    """On each engine: the seed of the window gauges (it was SQLite-only before)."""
    from proxy.store.engine import spend_by_window
    from tests.test_metrics import rec

    starts = (datetime(2026, 11, 3, 23, tzinfo=UTC), datetime(2026, 11, 1, 23, tzinfo=UTC),
              datetime(2026, 10, 31, 23, tzinfo=UTC))
    at_today, at_week, at_month = (s + timedelta(minutes=5) for s in starts)
    records = [
        rec(id="1", started_at=at_today, cost_usd=Decimal("0.1")),
        rec(id="2", started_at=at_today, cost_usd=Decimal("0.0000000003")),
        rec(id="3", started_at=at_week, cost_usd=Decimal("0.2")),
        rec(id="4", started_at=at_month, cost_usd=Decimal("0.4"), model=None, key_alias="laptop", session=None),
        rec(id="5", started_at=starts[2] - timedelta(seconds=1), cost_usd=Decimal("8")),  # last month
        rec(id="6", started_at=at_today, cost_usd=None),
        rec(id="7", started_at=at_today, cost_usd=Decimal("0"), session="s-free"),
        rec(id="8", started_at=at_today + timedelta(minutes=1), cost_usd=Decimal("1")),  # counted live
    ]
    await store.insert_requests(records)
    rows = await spend_by_window(store, starts, at_today + timedelta(minutes=1))
    model = "anthropic/claude-sonnet-4"
    assert sorted(rows, key=str) == sorted([
        (model, "fp-abc", "acme", "s1", (True, True, True), Decimal("0.1000000003")),
        (model, "fp-abc", "acme", "s1", (False, True, True), Decimal("0.2")),
        (model, "laptop", "acme", None, (False, False, True), Decimal("0.4")),
    ], key=str)


async def test_a_restart_seeds_the_windows_from_sqlite(start_proxy: Any, make_config: Any) -> None:
    import aiohttp

    config = make_config()
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession() as session:
        for sid, cost in (("s-1", "0.004"), ("s-2", "0.0005"), ("s-1", "0.001")):
            headers = {"Authorization": f"Bearer {KEY}", "X-Spend-Session": sid, "X-Fake-Cost": cost}
            async with session.post(f"{proxy.base}/chat/completions", headers=headers,
                                    json={"model": "openai/gpt-4o", "messages": []}) as r:
                assert r.status == 200
                await r.read()
    await proxy.settle()
    assert _day_by_session(proxy.registry) == {"s-1": 0.005, "s-2": 0.0005}
    await proxy.client.close()

    again = await start_proxy(config)
    for _ in range(200):  # seeded beside serving; a few milliseconds for three rows
        if _day_by_session(again.registry):
            break
        await asyncio.sleep(0.01)
    assert _day_by_session(again.registry) == {"s-1": 0.005, "s-2": 0.0005}
    text = await again.metrics_text()
    assert 'openrouter_proxy_spend_usd{key="' in text and 'window="week"' in text
