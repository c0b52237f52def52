"""WindowSpend: spend in the current calendar day, week and month, by model, key, project and session,
exported as the gauge `openrouter_proxy_spend_usd{window}` so "spend today / this week / this month"
panels show the exact sums (increase() extrapolates and cannot see spend from before Prometheus).

The windows are the budgets' (proxy.budgets.spec.window in the configured time zone, weeks from Monday)
and a request counts in the window its `started_at` falls in, as in budgets and `report`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from proxy.budgets.spec import BudgetSpec, window

WINDOWS = ("day", "week", "month")
LABELS = ("model", "key", "project", "session")
OTHER = "other"

Labels = tuple[str, str, str, str]
_ZERO = Decimal(0)
_SPECS = tuple(BudgetSpec(name=p, limit_usd=Decimal(1), period=p) for p in WINDOWS)


def bounds(now: datetime, tz: ZoneInfo) -> list[tuple[float, float]]:
    """(start, end) unix times of the day, week and month containing `now`."""
    return [(s.timestamp(), e.timestamp()) for s, e in (window(spec, now, tz) for spec in _SPECS)]


class WindowSpend:
    """Per-window Decimal sums keyed by label tuple; rolled over when a window ends (checked on add and
    on scrape, so a quiet midnight still resets the day). Each window holds at most `cap` label sets with
    their own session, up to `2 * cap` more with the session folded into `other`, then one all-`other`
    set: totals stay exact whatever the clients send."""

    __slots__ = ("_cap", "_clock", "_next_end", "_starts", "_totals", "_tz", "doc", "name")

    def __init__(
        self,
        registry: CollectorRegistry | None,
        name: str,
        doc: str,
        tz: ZoneInfo,
        *,
        cap: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.doc = doc
        self._tz = tz
        self._cap = cap
        self._clock = clock
        self._starts = [math.inf] * len(WINDOWS)
        self._totals: list[dict[Labels, Decimal]] = [{} for _ in WINDOWS]
        self._next_end = -math.inf
        self._roll(clock())
        if registry is not None:
            registry.register(self)

    @property
    def earliest_start(self) -> datetime:
        """Where the longest of the current windows starts (a week may begin in the previous month)."""
        self._roll(self._clock())
        return datetime.fromtimestamp(min(self._starts), UTC)

    def add(self, labels: Labels, amount: Decimal, at: float) -> None:
        """`amount` spent by a request that started at unix time `at`."""
        if at >= self._next_end:
            self._roll(at)
        for start, totals in zip(self._starts, self._totals):
            if at >= start:
                key = self._key(labels, totals)
                totals[key] = totals.get(key, _ZERO) + amount

    def load(self, rows: Iterable[tuple[float, Decimal, Labels]]) -> None:
        """Seeds the windows from the log (started_at, cost, labels), so a restart does not zero them."""
        self._roll(self._clock())
        for at, amount, labels in rows:
            self.add(labels, amount, at)

    def totals(self, window_name: str) -> dict[Labels, Decimal]:
        self._roll(self._clock())
        return dict(self._totals[WINDOWS.index(window_name)])

    def _key(self, labels: Labels, totals: dict[Labels, Decimal]) -> Labels:
        if labels in totals or len(totals) < self._cap:
            return labels
        folded: Labels = (labels[0], labels[1], labels[2], OTHER)
        if folded in totals or len(totals) < 3 * self._cap:
            return folded
        return (OTHER, OTHER, OTHER, OTHER)

    def _roll(self, now: float) -> None:
        if now < self._next_end:
            return
        current = bounds(datetime.fromtimestamp(now, UTC), self._tz)
        for i, (start, _end) in enumerate(current):
            if start != self._starts[i]:
                self._starts[i] = start
                self._totals[i] = {}
        self._next_end = min(end for _start, end in current)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.doc, labels=("window", *LABELS))

    def collect(self) -> Iterator[Metric]:
        self._roll(self._clock())
        fam = GaugeMetricFamily(self.name, self.doc, labels=("window", *LABELS))
        for name, totals in zip(WINDOWS, self._totals):
            for labels, amount in totals.items():
                fam.add_metric((name, *labels), float(amount))
        yield fam
