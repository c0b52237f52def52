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
_FOLD_EVERY = 1024
_SPECS = tuple(BudgetSpec(name=p, limit_usd=Decimal(1), period=p) for p in WINDOWS)


def bounds(now: datetime, tz: ZoneInfo) -> list[tuple[float, float]]:
    """(start, end) unix times of the day, week and month containing `now`."""
    return [(s.timestamp(), e.timestamp()) for s, e in (window(spec, now, tz) for spec in _SPECS)]


class WindowSpend:
    """Decimal sums per label tuple for the day, week and month, rolled over when a window ends (checked
    when requests are summed and on scrape, so a quiet midnight still resets the day). At most `cap`
    label sets keep their own session, up to `cap` more have the session folded into `other`, then
    one all-`other` set takes the rest: totals stay exact whatever the clients send."""

    __slots__ = ("_bounds", "_cap", "_clock", "_next_end", "_pending", "_starts", "_totals", "_tz", "doc", "name")

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
        # One entry per label set, its spend in [day, week, month]: one lookup per request.
        self._totals: dict[Labels, list[Decimal]] = {}
        self._next_end = -math.inf
        # The same as aware UTC datetimes: day, week, month start and the next end. Comparing datetimes
        # that share a tzinfo is ~20 times cheaper than datetime.timestamp().
        self._bounds: tuple[datetime, ...] = ()
        # The request path only appends here; requests are summed in batches, at scrape time or every
        # _FOLD_EVERY requests (so nothing grows while nobody scrapes).
        self._pending: list[tuple[Labels, Decimal, datetime]] = []
        self._roll(clock())
        if registry is not None:
            registry.register(self)

    @property
    def starts(self) -> tuple[datetime, ...]:
        """Where the current day, week and month start."""
        self._update()
        return tuple(datetime.fromtimestamp(s, UTC) for s in self._starts)

    def add(self, labels: Labels, amount: Decimal, started_at: datetime) -> None:
        """`amount` spent by a request that started at `started_at` (aware)."""
        pending = self._pending
        pending.append((labels, amount, started_at))
        if len(pending) >= _FOLD_EVERY:
            self._fold()

    def load(self, rows: Iterable[tuple[Labels, tuple[bool, ...], Decimal]],
             starts: tuple[datetime, ...]) -> None:
        """Seeds the windows from the log, so a restart does not zero them: (labels, in which of the
        windows starting at `starts`, cost) sums, as store.sqlite.spend_by_window returns them."""
        self._update()
        # A window that has ended since `starts` was read keeps nothing from it.
        current = [datetime.fromtimestamp(s, UTC) == start for s, start in zip(self._starts, starts, strict=True)]
        totals = self._totals
        for labels, within, amount in rows:
            windows = [i for i, inside in enumerate(within) if inside and current[i]]
            if windows:
                key = labels if labels in totals else self._key(labels)
                sums = totals.setdefault(key, [_ZERO, _ZERO, _ZERO])
                for i in windows:
                    sums[i] += amount

    def totals(self, window_name: str) -> dict[Labels, Decimal]:
        self._update()
        i = WINDOWS.index(window_name)
        return {labels: sums[i] for labels, sums in self._totals.items() if sums[i]}

    def _update(self) -> None:
        self._fold()
        self._roll(self._clock())

    def _fold(self) -> None:
        pending, self._pending = self._pending, []
        totals = self._totals
        day, week, month, next_end = self._bounds
        oldest = min(week, month)
        for labels, amount, at in pending:
            if at >= next_end:
                self._roll(at.timestamp())
                day, week, month, next_end = self._bounds
                oldest = min(week, month)
            if at < oldest:
                continue
            sums = totals.get(labels)
            if sums is None:
                key = self._key(labels)
                sums = totals.get(key)
                if sums is None:
                    sums = totals[key] = [_ZERO, _ZERO, _ZERO]
            if at >= day:
                sums[0] += amount
            if at >= week:
                sums[1] += amount
            if at >= month:
                sums[2] += amount

    def _key(self, labels: Labels) -> Labels:
        totals = self._totals
        if len(totals) < self._cap:
            return labels
        folded: Labels = (labels[0], labels[1], labels[2], OTHER)
        if folded in totals or len(totals) < 2 * self._cap:
            return folded
        return (OTHER, OTHER, OTHER, OTHER)

    def _roll(self, now: float) -> None:
        if now < self._next_end:
            return
        current = bounds(datetime.fromtimestamp(now, UTC), self._tz)
        ended = [i for i, (start, _end) in enumerate(current) if start != self._starts[i]]
        for i in ended:
            self._starts[i] = current[i][0]
            for sums in self._totals.values():
                sums[i] = _ZERO
        if ended:
            self._totals = {labels: sums for labels, sums in self._totals.items() if any(sums)}
        self._next_end = min(end for _start, end in current)
        self._bounds = tuple(datetime.fromtimestamp(t, UTC) for t in (*self._starts, self._next_end))

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.doc, labels=("window", *LABELS))

    def collect(self) -> Iterator[Metric]:
        self._update()
        fam = GaugeMetricFamily(self.name, self.doc, labels=("window", *LABELS))
        for i, name in enumerate(WINDOWS):
            for labels, sums in self._totals.items():
                if sums[i]:
                    fam.add_metric((name, *labels), float(sums[i]))
        yield fam
