"""BudgetGuard: the shell around the pure Budgets — clock, warm-up from SQLite, alerts out, gauges.

`decide()` and `settle()` are called from the request path and never await; alert delivery and
the alert's row in SQLite go through the notifier's and the recorder's queues.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiosqlite

from proxy.budgets.alerts import Notifier
from proxy.budgets.ledger import (
    AlertEvent,
    Budgets,
    BudgetStatus,
    Decision,
    Reservation,
    SpendRow,
    Who,
)
from proxy.budgets.spec import BudgetSpec, window
from proxy.metrics import Metrics
from proxy.server.attribution import Attribution
from proxy.server.throttle import Throttle
from proxy.store.engine import Store, as_store
from proxy.store.reader import Reader
from proxy.store.recorder import Recorder, Statement
from proxy.store.sqlite import encode_time

if TYPE_CHECKING:
    from proxy.server.shared import SharedLedger

_MASK_NUMBERS = re.compile(r"[0-9][0-9.,]*")

log = logging.getLogger(__name__)

_RECORD_ALERT = (
    "INSERT OR IGNORE INTO alerts (budget, scope, window_start, kind, sent_at, message) VALUES (?, ?, ?, ?, ?, ?)"
)


# Budgets match on the model the client asked for (known before forwarding) and on the model that
# served, so warm-up does both.
def who_of(attribution: Attribution, model: str | None, model_unknown: bool = False) -> Who:
    return Who(
        key=attribution.key_fingerprint,
        key_alias=attribution.key_alias,
        project=attribution.project,
        session=attribution.session,
        model=model,
        model_unknown=model_unknown,
    )


def earliest_window_start(specs: tuple[BudgetSpec, ...], budgets: Budgets, now: datetime) -> datetime:
    starts = [window(spec, now, budgets.tz)[0] for spec in specs]
    return min(starts, default=now).astimezone(UTC)


SPEND_QUERY = (
    "SELECT started_at, cost_usd, key_fingerprint, project, session, COALESCE(model_requested, model), key_alias, model "
    "FROM requests WHERE started_at >= ? AND cost_usd IS NOT NULL ORDER BY started_at"
)
ALERTS_QUERY = "SELECT budget, scope, window_start, kind FROM alerts WHERE window_start >= ?"


def spend_rows(raw: Iterable[Sequence[Any]]) -> list[SpendRow]:
    return [
        SpendRow(datetime.fromisoformat(started_at), Decimal(cost), key, project, session, model, alias, served)
        for started_at, cost, key, project, session, model, alias, served in raw
    ]


def fired_keys(raw: Iterable[Sequence[Any]]) -> list[tuple[str, str, str, str, str]]:
    keys = []
    for budget, scope, window_start, kind in raw:
        kind_name, _, threshold = kind.partition(":")
        keys.append((budget, scope, window_start, kind_name, threshold))
    return keys


async def load_spend(db: Store | aiosqlite.Connection, budgets: Budgets, now: datetime) -> int:
    """Recompute every budget's spend from the log, so a restart never resets a budget."""
    store = as_store(db)
    since = earliest_window_start(budgets.specs, budgets, now)
    rows = spend_rows(await store.fetch(SPEND_QUERY, (encode_time(since),)))
    budgets.load(rows, now)
    budgets.mark_fired(fired_keys(await store.fetch(ALERTS_QUERY, (since.isoformat(),))))
    return len(rows)


async def _written(db: Store | aiosqlite.Connection, recorder: Recorder, timeout_s: float = 5.0) -> None:
    """Wait until every row queued so far is in the database: a new budget read from the log must
    count the requests that just ended. The writer commits in queue order, so a marker statement
    queued now is committed once they are."""
    store = as_store(db)
    token = secrets.token_hex(8)
    # An upsert both engines speak (PostgreSQL has no INSERT OR REPLACE).
    recorder.record(Statement(
        "INSERT INTO meta (key, value) VALUES ('runtime_barrier', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (token,),
    ))
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while loop.time() < end:
        rows = await store.fetch("SELECT value FROM meta WHERE key = 'runtime_barrier'")
        if rows and rows[0][0] == token:
            return
        await asyncio.sleep(0.02)
    log.warning("event=runtime_budget_warmup_partial reason=recorder_behind")


async def respec(
    db: Store | aiosqlite.Connection, guard: BudgetGuard, recorder: Recorder, specs: tuple[BudgetSpec, ...], now: datetime
) -> None:
    """Budgets added or removed at runtime: warm up only the new ones from the log, keep the rest.

    A request in flight while a budget is created does not count in it (it holds no reservation
    there); one that settles during the read of the log may be missed until the next restart.
    """
    old = set(guard.budgets.specs)
    fresh = tuple(spec for spec in specs if spec not in old)
    rows: list[SpendRow] = []
    fired: list[tuple[str, str, str, str, str]] = []
    if fresh:
        await _written(db, recorder)
        since = earliest_window_start(fresh, guard.budgets, now)
        store = as_store(db)
        rows = spend_rows(await store.fetch(SPEND_QUERY, (encode_time(since),)))
        fired = fired_keys(await store.fetch(ALERTS_QUERY, (since.isoformat(),)))
    # No await from here on: the swap sees every reservation settled up to now.
    budgets = guard.budgets.with_specs(specs, rows, now)
    budgets.mark_fired(fired)
    guard.use(budgets)
    if guard.shared is not None and fresh:
        # New budgets: seed what the log shows if no replica has yet, then take the shared numbers.
        await guard.shared.start(now)


def load_spend_sync(db: Reader, budgets: Budgets, now: datetime) -> int:
    """The same, for the CLI's read-only connection."""
    since = earliest_window_start(budgets.specs, budgets, now)
    rows = spend_rows(tuple(r) for r in db.execute(SPEND_QUERY, (encode_time(since),)))
    budgets.load(rows, now)
    budgets.mark_fired(fired_keys(tuple(r) for r in db.execute(ALERTS_QUERY, (since.isoformat(),))))
    return len(rows)


_UNLIMITED = Decision(True, None, "", 0, None, Reservation(0, datetime.fromtimestamp(0, UTC), None))


class BudgetGuard:
    def __init__(self, budgets: Budgets, recorder: Recorder, notifier: Notifier, metrics: Metrics) -> None:
        self.budgets = budgets
        self._recorder = recorder
        self._notifier = notifier
        self._metrics = metrics
        self._warn_log = Throttle(log)
        # Set when the budgets are shared with other replicas through the database (proxy/server/shared.py).
        self.shared: SharedLedger | None = None
        for spec in budgets.specs:
            if spec.warn_at:
                metrics.set_budget_warn_ratio(spec.name, float(min(spec.warn_at)))

    def use(self, budgets: Budgets) -> None:
        gone = {spec.name for spec in self.budgets.specs} - {spec.name for spec in budgets.specs}
        self.budgets = budgets
        for spec in budgets.specs:
            if spec.warn_at:
                self._metrics.set_budget_warn_ratio(spec.name, float(min(spec.warn_at)))
        for name in gone:
            self._metrics.remove_budget(name)

    def decide(self, attribution: Attribution, model: str | None, model_unknown: bool = False) -> Decision:
        if not self.budgets.specs:
            # No budget at all (there is a guard anyway, for budgets made at runtime): skip the ledger.
            return _UNLIMITED
        return self._decided(self.budgets.decide(who_of(attribution, model, model_unknown), datetime.now(UTC)))

    async def admit(self, attribution: Attribution, model: str | None, model_unknown: bool = False) -> Decision:
        """decide() for shared budgets: the request's windows are locked and read from the database first."""
        if not self.budgets.specs:
            return _UNLIMITED
        assert self.shared is not None
        return self._decided(await self.shared.admit(who_of(attribution, model, model_unknown), datetime.now(UTC)))

    def _decided(self, decision: Decision) -> Decision:
        if not decision.allowed and decision.blocking is not None:
            self._metrics.budget_blocked(decision.blocking.name)
        for warning in decision.warnings:
            # Once a minute per budget (the message with its amounts masked), not once per request.
            self._warn_log.warning(_MASK_NUMBERS.sub("#", warning), "event=budget_spent_warn_only message=%r", warning)
        return decision

    def settle(self, reservation: Reservation, cost: Decimal | None) -> None:
        if reservation is _UNLIMITED.reservation:
            return
        if self.shared is not None:
            self.shared.settle(reservation, cost)
            return
        now = datetime.now(UTC)
        events = self.budgets.settle(reservation, cost, now)
        for event in events:
            self._alert(event, now)

    def charge(self, attribution: Attribution, served: str, cost: Decimal | None, skip: Reservation | None) -> None:
        """The model that served, when it is not the one the budget check saw, pays too."""
        now = datetime.now(UTC)
        if self.shared is not None:
            self.shared.charge(who_of(attribution, served), cost, now, skip)
            return
        for event in self.budgets.charge(who_of(attribution, served), cost, now, skip):
            self._alert(event, now)

    def _alert(self, event: AlertEvent, now: datetime) -> None:
        budget, scope, window_start, kind, threshold = event.key
        self._recorder.record(Statement(_RECORD_ALERT, (budget, scope, window_start, f"{kind}:{threshold}", encode_time(now), event.message)))
        self._notifier.notify(event)

    def notify(self, event: AlertEvent, now: datetime) -> None:
        """An alert whose row the shared ledger has claimed already: only this replica sends it."""
        self._notifier.notify(event)

    def publish(self) -> int:
        """Budget gauges from the in-memory state (seeded from SQLite, so right after a restart).

        Per budget only the scopes that spent most get gauges, as many as the metrics keep: setting
        more would only churn series out again on every tick. Returns the number of gauges set.
        """
        by_budget: dict[str, list[BudgetStatus]] = {}
        for status in self.budgets.snapshot(datetime.now(UTC)):
            by_budget.setdefault(status.name, []).append(status)
        cap = self._metrics.budget_scope_cap
        published = 0
        for statuses in by_budget.values():
            if len(statuses) > cap:
                statuses = heapq.nlargest(cap, statuses, key=lambda s: s.spent_usd)
            for status in statuses:
                self._set(status)
                published += 1
        return published

    def _set(self, status: BudgetStatus) -> None:
        self._metrics.set_budget(
            status.name,
            status.scope_value or "total",
            status.spent_usd,
            status.limit_usd,
            status.window_end.timestamp(),
            status.projected_usd,
        )


async def publish_loop(guard: BudgetGuard, interval_s: float = 5.0) -> None:
    while True:
        guard.publish()
        await asyncio.sleep(interval_s)


def retry_after(decision: Decision) -> int:
    return max(1, min(decision.retry_after_s, int(timedelta(days=31).total_seconds())))
