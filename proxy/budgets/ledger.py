"""Budgets: spend per budget window, kept in memory, checked before a request starts and settled after.

Overshoot is bounded by reserving, not by guessing: `decide()` admits a request only while the
settled spend plus the reservations of requests still in flight is below the limit, and reserves an
estimate for it (the running mean of recent costs for its model, or `reserve_usd` before any cost is
known); `settle()` swaps the reservation for the real cost when the request ends. Once settled spend
reaches the limit nothing new starts, so a budget can end over its limit by at most what the requests
already in flight at that moment cost. Tighter still: by at most what the requests in flight when
the last one was admitted cost beyond their reservations, plus the cost of that last request.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fnmatch import fnmatchcase
from itertools import count
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from proxy.budgets.messages import AlertKey, alert_key, held_message, projected_message, spent_message, warn_message
from proxy.budgets.spec import BudgetSpec, as_utc, window

KINDS = ("warn", "spent", "projected")
DEFAULT_RESERVE_USD = Decimal("0.05")
RESERVE_FLOOR_USD = Decimal("0.0001")
# A budget held only by reservations frees up as soon as those requests finish.
HELD_RETRY_AFTER_S = 5

UTC = timezone.utc
_ONE = Decimal(1)
_ZERO = Decimal(0)
_MICRO = Decimal("0.000001")
_SWEEP_EVERY = timedelta(seconds=60)
_EWMA_ALPHA = Decimal("0.3")
_MAX_REMEMBERED = 1000
# Scope values (sessions, projects) come from clients. Each budget tracks at most this many of
# them; the rest share one window, OTHER_SCOPE, held to the same limit, so a client minting ids
# can neither grow memory nor the publisher's and the sweep's work, nor dodge the budget.
# About 0.5 KiB a window: 1,000 keeps a budget's state under 1 MiB.
SCOPE_CAP = 1000
_ROLLING_SLICES = 240
# Clients cannot produce parentheses (attribution restricts their values), so this never collides.
OTHER_SCOPE = "(other)"

@dataclass(frozen=True, slots=True)
class Who:
    key: str | None = None
    key_alias: str | None = None
    project: str | None = None
    session: str | None = None
    model: str | None = None
    # The body named no model the upstream is bound to (none, unparseable, openrouter/auto, a
    # fallback list): it counts against every budget that matches on a model.
    model_unknown: bool = False


class SpendRow(NamedTuple):
    """One past request as read from SQLite for warm-up; plain 6- or 7-tuples work too."""

    started_at: datetime
    cost_usd: Decimal | None
    key: str | None
    project: str | None
    session: str | None
    model: str | None
    key_alias: str | None = None
    # The model that served, when the row says; budgets on it count the row too (once).
    served: str | None = None


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    name: str
    scope: str
    scope_value: str
    action: str
    period: str
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal
    in_flight: int
    share: Decimal
    remaining_usd: Decimal
    window_start: datetime
    window_end: datetime
    # Calendar: the window's end. Rolling: when enough spend ages out to be under the limit, if over.
    resets_at: datetime | None
    # Spend at the window's end at the current burn rate; None for rolling windows.
    projected_usd: Decimal | None

    def as_dict(self) -> dict[str, str | None]:
        """The JSON form `budgets --format json` prints and the page's /-/budgets returns."""
        return {
            "budget": self.name,
            "scope": self.scope,
            "scope_value": self.scope_value,
            "action": self.action,
            "period": self.period,
            "spent_usd": str(self.spent_usd),
            "reserved_usd": str(self.reserved_usd),
            "limit_usd": str(self.limit_usd),
            "share": str(self.share),
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "resets_at": self.resets_at.isoformat() if self.resets_at else None,
            "projected_usd": None if self.projected_usd is None else str(self.projected_usd),
        }


@dataclass(frozen=True, slots=True)
class _Hold:
    index: int
    scope_value: str
    window_start: datetime | None
    amount: Decimal
    # The budget's name: indexes change when budgets are added or deleted at runtime (with_specs).
    name: str = ""


@dataclass(frozen=True, slots=True)
class Reservation:
    """Opaque: what decide() set aside for one request; hand it to settle() or release() once."""

    id: int
    started_at: datetime
    model: str | None
    holds: tuple[_Hold, ...] = ()
    admitted: bool = True


@dataclass(frozen=True, slots=True)
class WindowRef:
    """One budget window as the shared (database) ledger names it: a calendar window by its start,
    a rolling one by its budget and scope value alone (its spend is kept in time slices)."""

    index: int
    budget: str
    scope_value: str
    start: datetime | None
    rolling_seconds: int | None

    @property
    def lock_key(self) -> str:
        # Unit separator: attribution never lets a client put control characters in a scope value.
        return f"{self.budget}\x1f{self.scope_value}"


@dataclass(frozen=True, slots=True)
class WindowState:
    """A window's numbers read from the shared ledger: spend (per slice for rolling windows) and
    the holds of requests in flight on every replica."""

    spent: Decimal
    reserved: Decimal
    in_flight: int
    entries: tuple[tuple[datetime, Decimal], ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    blocking: BudgetStatus | None
    message: str
    retry_after_s: int
    remaining_usd: Decimal | None
    reservation: Reservation
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AlertEvent:
    budget: str
    scope: str
    scope_value: str
    kind: str
    threshold: Decimal
    spent_usd: Decimal
    limit_usd: Decimal
    window_start: datetime
    window_end: datetime
    message: str
    projected_usd: Decimal | None = None

    @property
    def key(self) -> AlertKey:
        return alert_key(self.budget, self.scope_value, self.window_start, self.kind, self.threshold)


def _epoch(spec: BudgetSpec, now_u: datetime) -> tuple[datetime, datetime]:
    # Alerts for a rolling budget are deduplicated per fixed UTC-aligned stretch of its length.
    assert spec.rolling_seconds is not None
    length = spec.rolling_seconds
    start = datetime.fromtimestamp(int(now_u.timestamp()) // length * length, UTC)
    return start, start + timedelta(seconds=length)


# ---------------------------------------------------------------- state


@dataclass(slots=True)
class _Window:
    start: datetime | None  # None for rolling windows
    end: datetime | None
    spent: Decimal = _ZERO
    reserved: Decimal = _ZERO
    in_flight: int = 0
    entries: list[tuple[datetime, Decimal]] = field(default_factory=list)  # rolling only, by time


class Budgets:
    """In-memory spend per budget and scope value. No I/O and no clock: every call takes `now`."""

    def __init__(
        self,
        specs: Iterable[BudgetSpec],
        tz: ZoneInfo,
        *,
        reserve_usd: Decimal = DEFAULT_RESERVE_USD,
        reserve_floor_usd: Decimal = RESERVE_FLOOR_USD,
        projection_min_elapsed: float = 0.1,
        scope_cap: int = SCOPE_CAP,
    ) -> None:
        self.specs = tuple(specs)
        self.tz = tz
        self._reserve = reserve_usd
        self._floor = reserve_floor_usd
        self._min_elapsed = projection_min_elapsed
        self._states: dict[tuple[int, str], _Window] = {}
        self._scope_cap = scope_cap
        self._tracked = [0] * len(self.specs)  # own (not OTHER_SCOPE) windows per budget
        self._fired: dict[AlertKey, datetime] = {}  # key -> when it can be forgotten
        self._live: dict[int, Reservation] = {}
        self._means: OrderedDict[str, Decimal] = OrderedDict()
        self._aliases: OrderedDict[str, str] = OrderedDict()
        self._ids = count(1)
        self._last_sweep: datetime | None = None
        self._by_name = {s.name: s for s in self.specs}

    # -- warm-up

    def load(self, rows: Iterable[SpendRow | tuple[Any, ...]], now: datetime, *, only: frozenset[int] | None = None) -> None:
        """Add past spend (rows inside the widest window, oldest first); call once, before traffic.

        Each row is (started_at, cost_usd, key fingerprint, project, session, requested model[, key alias[, served model]]);
        started_at may be an ISO-8601 string and cost a float or string, as SQLite returns them.
        `only` (spec indexes) warms up budgets added at runtime, leaving the others and the
        running cost means as they are.
        """
        now_u = as_utc(now)
        for raw in rows:
            row = SpendRow(*raw)
            # SQLite hands back text and floats; naive times there are UTC.
            cost = None if row.cost_usd is None else Decimal(str(row.cost_usd))
            if cost is None or cost <= 0:
                continue
            started: Any = row.started_at
            if isinstance(started, str):
                started = datetime.fromisoformat(started)
            ts = (started if started.tzinfo else started.replace(tzinfo=UTC)).astimezone(UTC)
            if only is None:
                self._learn(row.model, cost)
            who = Who(row.key, row.key_alias, row.project, row.session, row.model)
            matched = list(self._matching(who))
            if row.served and row.served != row.model:
                # As live: budgets on the model that served pay too, those already matched once.
                held = {i for i, _, _ in matched}
                served = Who(row.key, row.key_alias, row.project, row.session, row.served)
                matched += [m for m in self._matching(served) if m[0] not in held]
            for i, spec, value in matched:
                if only is not None and i not in only:
                    continue
                st = self._current(i, value, now_u)
                if spec.rolling_seconds is None:
                    assert st.start is not None and st.end is not None
                    if st.start <= ts < st.end:
                        st.spent += cost
                elif ts > now_u - timedelta(seconds=spec.rolling_seconds):
                    _add_entry(spec, st, ts, cost)
                    st.spent += cost

    def with_specs(self, specs: Iterable[BudgetSpec], rows: Iterable[SpendRow | tuple[Any, ...]], now: datetime) -> Budgets:
        """A Budgets for a new set of specs (budgets created or deleted at runtime).

        A spec present before, unchanged, keeps its windows and in-flight reservations as they are
        (re-reading them from SQLite would miss rows still queued in the recorder); a new or changed
        spec is warmed up from `rows` like at start. Reservations handed out before keep working:
        settle() goes by the reservation's id, not by the indexes it was made with.
        """
        new = Budgets(
            specs, self.tz, reserve_usd=self._reserve, reserve_floor_usd=self._floor,
            projection_min_elapsed=self._min_elapsed, scope_cap=self._scope_cap,
        )
        old_index = {spec: i for i, spec in enumerate(self.specs)}
        moved: dict[int, int] = {}
        for j, spec in enumerate(new.specs):
            i = old_index.get(spec)
            if i is not None:
                moved[i] = j
        for (i, value), st in self._states.items():
            if i in moved:
                new._states[(moved[i], value)] = st
        for i, j in moved.items():
            new._tracked[j] = self._tracked[i]
        kept = {self.specs[i].name for i in moved}
        new._fired = {key: until for key, until in self._fired.items() if key[0] in kept}
        new._means = OrderedDict(self._means)
        new._aliases = OrderedDict(self._aliases)
        new._ids = self._ids
        new._last_sweep = self._last_sweep
        for rid, res in self._live.items():
            holds = tuple(dataclasses.replace(h, index=moved[h.index]) for h in res.holds if h.index in moved)
            new._live[rid] = dataclasses.replace(res, holds=holds)
        fresh = frozenset(j for j in range(len(new.specs)) if j not in moved.values())
        if fresh:
            new.load(rows, now, only=fresh)
        return new

    def mark_fired(self, keys: Iterable[AlertKey]) -> None:
        """Seed the alerts already sent (from SQLite) so a restart does not send them again."""
        for key in keys:
            spec = self._by_name.get(key[0])
            if spec is None:
                continue
            try:
                start = as_utc(datetime.fromisoformat(key[2]))
            except ValueError:
                continue
            if spec.rolling_seconds is None:
                end = as_utc(window(spec, start, self.tz)[1])
            else:
                end = start + timedelta(seconds=spec.rolling_seconds)
            self._fired[(key[0], key[1], start.isoformat(), key[3], key[4])] = end

    # -- per request

    def decide(self, who: Who, now: datetime) -> Decision:
        now_u = as_utc(now)
        self._maybe_sweep(now_u)
        if who.key and who.key_alias:
            self._remember(self._aliases, who.key, who.key_alias)
        matching = [(i, spec, value, self._current(i, value, now_u)) for i, spec, value in self._matching(who)]
        if who.model_unknown:
            matching += self._any_model_full(who, now_u)
        remaining = min((max(_ZERO, s.limit_usd - st.spent) for _, s, _, st in matching), default=None)
        blocking: tuple[BudgetStatus, str, int] | None = None
        warnings: list[str] = []
        for i, spec, value, st in matching:
            over = st.spent >= spec.limit_usd
            held = st.spent + st.reserved >= spec.limit_usd
            if spec.action == "warn":
                if over:
                    warnings.append(spent_message(spec, self._status(i, spec, value, st, now_u), self.tz, self._shown(spec, value)))
                continue
            if over or held:
                status = self._status(i, spec, value, st, now_u)
                if over:
                    message, retry = spent_message(spec, status, self.tz, self._shown(spec, value)), _retry_after(status, now_u)
                else:
                    message, retry = held_message(spec, status, self._shown(spec, value)), HELD_RETRY_AFTER_S
                if blocking is None or retry > blocking[2]:
                    blocking = (status, message, retry)
        if blocking is not None:
            empty = Reservation(next(self._ids), now_u, who.model, admitted=False)
            return Decision(False, blocking[0], blocking[1], blocking[2], remaining, empty, tuple(warnings))
        amount = self._estimate(who.model)
        holds = []
        for i, spec, value, st in matching:
            st.reserved += amount
            st.in_flight += 1
            holds.append(_Hold(i, value, st.start, amount, spec.name))
        reservation = Reservation(next(self._ids), now_u, who.model, tuple(holds))
        if holds:
            self._live[reservation.id] = reservation
        return Decision(True, None, "", 0, remaining, reservation, tuple(warnings))

    def release(self, reservation: Reservation) -> None:
        """For a request that never reached upstream: give back what was reserved."""
        self._settle(reservation, None, None)

    def settle(self, reservation: Reservation, cost: Decimal | None, now: datetime) -> list[AlertEvent]:
        """Swap the reservation for the real cost (None releases it) and return alerts now due."""
        return self._settle(reservation, cost, as_utc(now))

    def _settle(self, reservation: Reservation, cost: Decimal | None, now_u: datetime | None) -> list[AlertEvent]:
        if not reservation.admitted:
            return []
        live = self._live.pop(reservation.id, None)
        if reservation.holds and live is None:
            return []  # already settled
        # The stored copy: with_specs() may have moved its holds to other indexes, or dropped some.
        holds = live.holds if live is not None else ()
        if cost is not None and cost < 0:
            cost = None
        if cost is not None:
            self._learn(reservation.model, cost)
        events: list[AlertEvent] = []
        for hold in holds:
            spec = self.specs[hold.index]
            if now_u is None:
                st = self._states.get((hold.index, hold.scope_value))
            else:
                st = self._current(hold.index, hold.scope_value, now_u)
            if st is None or st.start != hold.window_start:
                continue  # the window this request started in is over
            st.reserved -= hold.amount
            st.in_flight -= 1
            if not cost or now_u is None:
                continue
            if spec.rolling_seconds is None:
                st.spent += cost
            else:
                _add_entry(spec, st, reservation.started_at, cost)
                st.spent += cost
                self._expire(spec, st, now_u)
            events.extend(self._alerts(hold.index, spec, hold.scope_value, st, now_u))
        return events

    def charge(self, who: Who, cost: Decimal | None, now: datetime, skip: Reservation | None = None) -> list[AlertEvent]:
        """Spend on the budgets a request did not reserve on: those matching the model that served.

        Budgets the reservation already held are skipped whatever their scope value, so a served
        id that differs from the requested slug (a dated suffix) is never charged twice.
        """
        if not cost or cost < 0:
            return []
        now_u = as_utc(now)
        # By name: the caller's reservation may predate a with_specs() that moved the indexes.
        held = {hold.name for hold in skip.holds} if skip is not None else set()
        started = skip.started_at if skip is not None else now_u
        events: list[AlertEvent] = []
        for i, spec, value in list(self._matching(who)):
            if spec.name in held:
                continue
            st = self._current(i, value, now_u)
            st.spent += cost
            if spec.rolling_seconds is not None:
                bisect.insort(st.entries, (started, cost))
                self._expire(spec, st, now_u)
            events.extend(self._alerts(i, spec, value, st, now_u))
        return events

    # -- shared mode: the windows live in a database, this object keeps a synced copy

    def refs(self, who: Who, now: datetime) -> list[WindowRef]:
        """The windows decide(who, now) would look at, to lock and read before it runs."""
        now_u = as_utc(now)
        self._maybe_sweep(now_u)
        found = [(i, spec, value, self._current(i, value, now_u)) for i, spec, value in self._matching(who)]
        if who.model_unknown:
            found += self._any_model_full(who, now_u)
        return [WindowRef(i, spec.name, value, st.start, spec.rolling_seconds) for i, spec, value, st in found]

    def charged_refs(self, who: Who, now: datetime, skip: Reservation | None = None) -> list[WindowRef]:
        """The windows charge(who, ...) adds to: those matching, less the ones the reservation held."""
        now_u = as_utc(now)
        held = {hold.name for hold in skip.holds} if skip is not None else set()
        out = []
        for i, spec, value in list(self._matching(who)):
            if spec.name in held:
                continue
            st = self._current(i, value, now_u)
            out.append(WindowRef(i, spec.name, value, st.start, spec.rolling_seconds))
        return out

    def held(self, reservation: Reservation) -> list[tuple[WindowRef, Decimal]]:
        """The windows a live reservation holds, with the amount held on each."""
        live = self._live.get(reservation.id)
        if live is None:
            return []
        out = []
        for hold in live.holds:
            spec = self.specs[hold.index]
            out.append((WindowRef(hold.index, spec.name, hold.scope_value, hold.window_start, spec.rolling_seconds), hold.amount))
        return out

    def known_refs(self, now: datetime) -> list[WindowRef]:
        """Every window this process keeps (and each total budget's current one), to refresh from the database."""
        now_u = as_utc(now)
        for i, spec in enumerate(self.specs):
            if spec.scope == "total":
                self._current(i, "", now_u)
        out = []
        for (i, value) in list(self._states):
            st = self._current(i, value, now_u)
            spec = self.specs[i]
            out.append(WindowRef(i, spec.name, value, st.start, spec.rolling_seconds))
        return out

    def sync(self, ref: WindowRef, state: WindowState, now: datetime) -> None:
        """Take the shared ledger's numbers for one window (no-op if the spec moved or the window ended)."""
        if ref.index >= len(self.specs) or self.specs[ref.index].name != ref.budget:
            return
        now_u = as_utc(now)
        st = self._current(ref.index, ref.scope_value, now_u)
        if st.start != ref.start:
            return
        st.reserved = state.reserved
        st.in_flight = state.in_flight
        if ref.rolling_seconds is None:
            st.spent = state.spent
        else:
            st.entries = sorted(state.entries)
            st.spent = sum((c for _, c in st.entries), _ZERO)
            self._expire(self.specs[ref.index], st, now_u)

    def slice_at(self, ref: WindowRef, started_at: datetime) -> datetime:
        """Where a cost is kept in the shared ledger: a calendar window's start, a rolling window's slice."""
        if ref.rolling_seconds is None:
            assert ref.start is not None
            return ref.start
        step = max(1, ref.rolling_seconds // _ROLLING_SLICES)
        return datetime.fromtimestamp(math.ceil(as_utc(started_at).timestamp() / step) * step, UTC)

    def finish(self, reservation: Reservation, cost: Decimal | None) -> bool:
        """Shared mode's settle: forget the reservation and learn the cost; the windows are synced
        from the database afterwards. False when it was settled already (or never admitted)."""
        if not reservation.admitted or self._live.pop(reservation.id, None) is None:
            return False
        if cost is not None and cost >= 0:
            self._learn(reservation.model, cost)
        return True

    def alerts_for(self, ref: WindowRef, now: datetime) -> list[AlertEvent]:
        """Alerts now due on one (synced) window; the caller claims each before sending it."""
        if ref.index >= len(self.specs) or self.specs[ref.index].name != ref.budget:
            return []
        now_u = as_utc(now)
        st = self._current(ref.index, ref.scope_value, now_u)
        if st.start != ref.start:
            return []
        return self._alerts(ref.index, self.specs[ref.index], ref.scope_value, st, now_u)

    def warm_windows(self, now: datetime) -> list[tuple[WindowRef, WindowState]]:
        """Every window the warm-up filled, to seed a shared ledger that has not seen them yet."""
        now_u = as_utc(now)
        out = []
        for (i, value), st in list(self._states.items()):
            spec = self.specs[i]
            st = self._current(i, value, now_u)
            if not st.spent:
                continue
            ref = WindowRef(i, spec.name, value, st.start, spec.rolling_seconds)
            out.append((ref, WindowState(st.spent, _ZERO, 0, tuple(st.entries))))
        return out

    # -- reporting

    def snapshot(self, now: datetime) -> list[BudgetStatus]:
        now_u = as_utc(now)
        self._maybe_sweep(now_u, force=True)
        for i, spec in enumerate(self.specs):
            if spec.scope == "total":
                self._current(i, "", now_u)
        out = []
        for (i, value) in sorted(self._states):
            spec = self.specs[i]
            st = self._current(i, value, now_u)
            if spec.scope == "total" or st.spent or st.in_flight:
                out.append(self._status(i, spec, value, st, now_u))
        return out

    # -- internals

    def _matching(self, who: Who) -> Iterable[tuple[int, BudgetSpec, str]]:
        for i, spec in enumerate(self.specs):
            value = _scope_value(spec, who)
            if value is not None and _matches(spec, who):
                yield i, spec, self._slot(i, spec, value)

    def _slot(self, i: int, spec: BudgetSpec, value: str) -> str:
        """The window a scope value is counted in: its own, or OTHER_SCOPE past the cap.

        Once OTHER_SCOPE exists, new values keep folding into it until it is swept (its window over,
        or its rolling spend aged out): a value counted there must not get a fresh window of its own
        while its spend in `other` still stands.
        """
        if spec.scope == "total" or (i, value) in self._states:
            return value
        if self._tracked[i] >= self._scope_cap or (i, OTHER_SCOPE) in self._states:
            return OTHER_SCOPE
        return value

    def _any_model_full(self, who: Who, now_u: datetime) -> list[tuple[int, BudgetSpec, str, _Window]]:
        """A request whose model is unknown may be served by any model: per-model block budgets
        whose window for some model is full (spent, or held by reservations) apply to it."""
        full = []
        for i, value in list(self._states):
            spec = self.specs[i]
            if spec.scope != "model" or spec.action != "block" or not _matches(spec, who):
                continue
            st = self._current(i, value, now_u)
            if st.spent + st.reserved >= spec.limit_usd:
                full.append((i, spec, value, st))
        return full

    def _current(self, i: int, value: str, now_u: datetime) -> _Window:
        spec = self.specs[i]
        st = self._states.get((i, value))
        if st is None and value != OTHER_SCOPE:
            self._tracked[i] += 1
        if spec.rolling_seconds is not None:
            if st is None:
                st = self._states[(i, value)] = _Window(None, None)
            self._expire(spec, st, now_u)
            return st
        if st is None or st.end is None or now_u >= st.end or (st.start is not None and now_u < st.start):
            start, end = window(spec, now_u, self.tz)
            st = self._states[(i, value)] = _Window(as_utc(start), as_utc(end))
        return st

    def _expire(self, spec: BudgetSpec, st: _Window, now_u: datetime) -> None:
        assert spec.rolling_seconds is not None
        cutoff = now_u - timedelta(seconds=spec.rolling_seconds)
        cut = bisect.bisect_right(st.entries, cutoff, key=lambda e: e[0])
        if cut:
            st.spent -= sum((c for _, c in st.entries[:cut]), _ZERO)
            del st.entries[:cut]

    def _maybe_sweep(self, now_u: datetime, force: bool = False) -> None:
        # Scope values come from clients (session, project), so forget those whose window is over.
        if not force and self._last_sweep is not None and now_u - self._last_sweep < _SWEEP_EVERY:
            return
        self._last_sweep = now_u
        for (i, value), st in list(self._states.items()):
            if st.in_flight:
                continue
            spec = self.specs[i]
            if spec.rolling_seconds is not None:
                self._expire(spec, st, now_u)
                if not st.entries:
                    self._forget(i, value)
            elif st.end is not None and now_u >= st.end:
                self._forget(i, value)
        for key, until in list(self._fired.items()):
            if now_u >= until:
                del self._fired[key]

    def _forget(self, i: int, value: str) -> None:
        del self._states[(i, value)]
        if value != OTHER_SCOPE:
            self._tracked[i] -= 1

    def _estimate(self, model: str | None) -> Decimal:
        mean = self._means.get(model or "")
        # Reservations are added and taken back in any order, which is exact only at a fixed scale:
        # a 28-digit running mean once left -2E-30 reserved behind after every request had settled.
        return self._reserve if mean is None else max(self._floor, mean.quantize(_MICRO))

    def _learn(self, model: str | None, cost: Decimal) -> None:
        name = model or ""
        mean = self._means.get(name)
        self._remember(self._means, name, cost if mean is None else mean + _EWMA_ALPHA * (cost - mean))

    @staticmethod
    def _remember(memory: OrderedDict[str, Any], key: str, value: Any) -> None:
        memory[key] = value
        memory.move_to_end(key)
        if len(memory) > _MAX_REMEMBERED:
            memory.popitem(last=False)

    def _status(self, i: int, spec: BudgetSpec, value: str, st: _Window, now_u: datetime) -> BudgetStatus:
        projected: Decimal | None = None
        resets: datetime | None
        if spec.rolling_seconds is None:
            assert st.start is not None and st.end is not None
            start, end = st.start, st.end
            resets = end
            elapsed = (now_u - start).total_seconds()
            if elapsed > 0:
                projected = (st.spent * Decimal(str((end - start).total_seconds())) / Decimal(str(elapsed))).quantize(_MICRO)
        else:
            start, end = now_u - timedelta(seconds=spec.rolling_seconds), now_u
            resets = _ages_out(spec, st) if st.spent >= spec.limit_usd else None
        return BudgetStatus(
            name=spec.name,
            scope=spec.scope,
            scope_value=value,
            action=spec.action,
            period=spec.period_label,
            limit_usd=spec.limit_usd,
            spent_usd=st.spent,
            reserved_usd=st.reserved,
            in_flight=st.in_flight,
            share=st.spent / spec.limit_usd,
            remaining_usd=max(_ZERO, spec.limit_usd - st.spent),
            window_start=start.astimezone(self.tz),
            window_end=end.astimezone(self.tz),
            resets_at=None if resets is None else resets.astimezone(self.tz),
            projected_usd=projected,
        )

    def _alerts(self, i: int, spec: BudgetSpec, value: str, st: _Window, now_u: datetime) -> list[AlertEvent]:
        if spec.rolling_seconds is None:
            assert st.start is not None and st.end is not None
            start, end = st.start, st.end
        else:
            start, end = _epoch(spec, now_u)
        # Runs on every settle: skip building a status while the spend is below the first
        # threshold and below what the burn rate could project past the limit
        # (projected >= limit exactly when share >= the elapsed share of the window).
        share = st.spent / spec.limit_usd
        lowest = min(spec.warn_at, default=_ONE)
        if share < lowest and (
            spec.rolling_seconds is not None or float(share) * (end - start).total_seconds() < (now_u - start).total_seconds()
        ):
            return []
        status = self._status(i, spec, value, st, now_u)
        levels = (*sorted(spec.warn_at), _ONE)
        crossed = [t for t in levels if status.share >= t]
        events: list[AlertEvent] = []
        if crossed:
            top = crossed[-1]
            fired = [t for t in levels if alert_key(spec.name, value, start, _level_kind(t), t) in self._fired]
            if not fired or top > fired[-1]:
                if top == _ONE:
                    message = spent_message(spec, status, self.tz, self._shown(spec, value))
                else:
                    message = warn_message(spec, status, top, self.tz, self._shown(spec, value))
                events.append(self._event(spec, status, _level_kind(top), top, start, end, message))
        if (
            spec.rolling_seconds is None
            and status.share < _ONE
            and status.projected_usd is not None
            and status.projected_usd >= spec.limit_usd
            and (now_u - start) / (end - start) >= self._min_elapsed
            and alert_key(spec.name, value, start, "projected", _ONE) not in self._fired
        ):
            message = projected_message(spec, status, now_u, self.tz, self._shown(spec, value))
            events.append(self._event(spec, status, "projected", _ONE, start, end, message))
        return events

    def _event(
        self, spec: BudgetSpec, status: BudgetStatus, kind: str, threshold: Decimal, start: datetime, end: datetime, message: str
    ) -> AlertEvent:
        event = AlertEvent(
            budget=spec.name,
            scope=spec.scope,
            scope_value=status.scope_value,
            kind=kind,
            threshold=threshold,
            spent_usd=status.spent_usd,
            limit_usd=spec.limit_usd,
            window_start=start.astimezone(self.tz),
            window_end=end.astimezone(self.tz),
            message=message,
            projected_usd=status.projected_usd,
        )
        self._fired[event.key] = end
        return event

    def _shown(self, spec: BudgetSpec, value: str) -> str:
        if value == OTHER_SCOPE:
            return f"(other: every {spec.scope} past the first {self._scope_cap} seen)"
        return self._aliases.get(value, value) if spec.scope == "key" else value


def _scope_value(spec: BudgetSpec, who: Who) -> str | None:
    # A request without a value for the budget's scope (no session, say) is outside that budget.
    if spec.scope == "total":
        return ""
    return _field(who, spec.scope)


def _field(who: Who, name: str) -> str | None:
    return {"key": who.key, "project": who.project, "session": who.session, "model": who.model}[name]


def _matches(spec: BudgetSpec, who: Who) -> bool:
    for name, pattern in spec.match:
        if name == "model" and who.model_unknown:
            continue
        values = (who.key, who.key_alias) if name == "key" else (_field(who, name),)
        if not any(v is not None and fnmatchcase(v, pattern) for v in values):
            return False
    return True


def _add_entry(spec: BudgetSpec, st: _Window, ts: datetime, cost: Decimal) -> None:
    # A rolling window keeps its spend in at most _ROLLING_SLICES slices, not one entry per request
    # (60,000 requests in an hour were 60,000 entries). The time is rounded up to its slice's end,
    # so spend ages out at most one slice late, never early: the budget errs on the strict side.
    assert spec.rolling_seconds is not None
    step = max(1, spec.rolling_seconds // _ROLLING_SLICES)
    at = datetime.fromtimestamp(math.ceil(ts.timestamp() / step) * step, UTC)
    i = bisect.bisect_left(st.entries, at, key=lambda e: e[0])
    if i < len(st.entries) and st.entries[i][0] == at:
        st.entries[i] = (at, st.entries[i][1] + cost)
    else:
        st.entries.insert(i, (at, cost))


def _ages_out(spec: BudgetSpec, st: _Window) -> datetime | None:
    assert spec.rolling_seconds is not None
    left = st.spent
    for ts, cost in st.entries:
        left -= cost
        if left < spec.limit_usd:
            return ts + timedelta(seconds=spec.rolling_seconds)
    return None


def _retry_after(status: BudgetStatus, now_u: datetime) -> int:
    if status.resets_at is None:
        return HELD_RETRY_AFTER_S
    return max(1, math.ceil((status.resets_at - now_u).total_seconds()))


def _level_kind(threshold: Decimal) -> str:
    return "spent" if threshold >= _ONE else "warn"

