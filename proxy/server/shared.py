"""Budgets shared by replicas: admission through the database ledger, settles queued to one task.

The pure Budgets still makes every decision (messages, estimates, alerts); before it runs, the
windows a request matches are locked and read from the database (proxy/store/holds.py) and synced
into it, and its holds are written in the same transaction. Settles never await on the request
path: they are queued and written in batches; until then the request's holds keep counting, so
a slow database makes admission stricter, never looser.

Guarantee (the single-process one, across every replica on the database): a budget ends over its
limit by at most what the requests in flight when the last one was admitted cost beyond their
reservations, plus that last request's cost. Extra, stated: holds of a replica that has not renewed
its lease for `LEASE_S` seconds stop counting; and when the database cannot be reached at
admission, a replica decides on its own last view (logged), as one process would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from proxy.budgets.ledger import (
    AlertEvent,
    Budgets,
    Decision,
    Reservation,
    Who,
    WindowRef,
    WindowState,
)
from proxy.server.throttle import Throttle
from proxy.store.holds import HEARTBEAT_S, HoldRow, HoldStore, Spend

log = logging.getLogger(__name__)

_BATCH = 200
_MAX_BACKOFF_S = 5.0
_DRAIN_S = 5.0


def replica_id() -> str:
    return f"{replica_prefix(os.getpid())}{secrets.token_hex(3)}"


def replica_prefix(pid: int) -> str:
    """How every replica id of process `pid` on this host begins."""
    return f"{socket.gethostname()[:40]}:{pid}:"


@dataclass(frozen=True, slots=True)
class _Admission:
    who: Who
    refs: list[WindowRef]
    done: asyncio.Future[Decision]


@dataclass(frozen=True, slots=True)
class _Ended:
    reservation: int | None
    spends: tuple[Spend, ...]
    refs: tuple[WindowRef, ...]


class SharedLedger:
    """One per process: admits through the database, writes settles from one task, renews the lease."""

    def __init__(
        self,
        holds: HoldStore,
        budgets: Callable[[], Budgets],
        on_alert: Callable[[AlertEvent, datetime], None],
        claim_errors: tuple[type[BaseException], ...],
    ) -> None:
        self.holds = holds
        self._budgets = budgets
        self._on_alert = on_alert
        self._errors = claim_errors
        self._queue: asyncio.Queue[_Ended] = asyncio.Queue()
        self._admissions: asyncio.Queue[_Admission] = asyncio.Queue()
        self._log = Throttle(log)
        self.lost = 0
        self._writing = 0

    # -- start-up

    async def start(self, now: datetime) -> None:
        """Join (take a lease), seed windows the database has never seen from the warmed-up log, and
        take the database's numbers for every window: a replica starting mid-window sees the spend so far."""
        budgets = self._budgets()
        await self.holds.join()
        await self.holds.seed(budgets.warm_windows(now), budgets.slice_at)
        await self.refresh(now)

    async def refresh(self, now: datetime) -> None:
        budgets = self._budgets()
        refs = budgets.known_refs(now)
        if refs:
            for ref, state in (await self.holds.read(refs, now)).items():
                budgets.sync(ref, state, now)

    # -- per request

    async def admit(self, who: Who, now: datetime) -> Decision:
        budgets = self._budgets()
        refs = budgets.refs(who, now)
        if not refs:
            return budgets.decide(who, now)  # no budget matches: nothing to lock
        done: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._admissions.put_nowait(_Admission(who, refs, done))
        return await done

    async def admissions(self) -> None:
        """The admission task: the requests waiting are admitted together, in one transaction (the
        database's lock is held once for all of them, as a group commit would)."""
        while True:
            batch = [await self._admissions.get()]
            while len(batch) < _BATCH and not self._admissions.empty():
                batch.append(self._admissions.get_nowait())
            batch = [a for a in batch if not a.done.cancelled()]
            if batch:
                await self._admit(batch)

    async def _admit(self, batch: list[_Admission]) -> None:
        now = datetime.now(UTC)
        budgets = self._budgets()
        refs = list(dict.fromkeys(ref for a in batch for ref in a.refs))
        decisions: list[Decision] = []

        def decide(states: dict[WindowRef, WindowState]) -> list[HoldRow]:
            # No await in here: the sync and the decisions see the same numbers, and each decision
            # the reservations of those before it in the batch.
            decisions.clear()
            for ref, state in states.items():
                budgets.sync(ref, state, now)
            holds = []
            for a in batch:
                decision = budgets.decide(a.who, now)
                decisions.append(decision)
                if decision.allowed:
                    holds += [HoldRow(decision.reservation.id, ref, amount) for ref, amount in budgets.held(decision.reservation)]
            return holds

        try:
            await self.holds.admit(refs, now, decide)
        except BaseException as exc:
            for decision in decisions:
                if decision.allowed:
                    # Gives back the hold, wherever it got to (a cancelled commit may have gone in).
                    self.settle(decision.reservation, None)
            if isinstance(exc, asyncio.CancelledError):
                for a in batch:
                    a.done.cancel()
                raise
            if not isinstance(exc, self._errors):
                for a in batch:
                    if not a.done.done():
                        a.done.set_exception(exc)
                return
            # As one process would: on its last view of the windows (synced at the last admission or refresh).
            self._log.warning("admit", "event=shared_budgets_unavailable step=admit error=%r", exc)
            for a in batch:
                if not a.done.done():
                    a.done.set_result(budgets.decide(a.who, now))
            return
        for a, decision in zip(batch, decisions, strict=True):
            if a.done.cancelled():
                if decision.allowed:
                    self.settle(decision.reservation, None)  # its client left while it waited
            else:
                a.done.set_result(decision)

    def settle(self, reservation: Reservation, cost: Decimal | None) -> None:
        budgets = self._budgets()
        held = budgets.held(reservation)
        if not budgets.finish(reservation, cost):
            return
        spends: tuple[Spend, ...] = ()
        if cost is not None and cost > 0:
            spends = tuple(Spend(ref, budgets.slice_at(ref, reservation.started_at), cost) for ref, _ in held)
        self._queue.put_nowait(_Ended(reservation.id if held else None, spends, tuple(ref for ref, _ in held)))

    def charge(self, who: Who, cost: Decimal | None, now: datetime, skip: Reservation | None) -> None:
        if not cost or cost < 0:
            return
        budgets = self._budgets()
        refs = budgets.charged_refs(who, now, skip)
        if refs:
            started = skip.started_at if skip is not None else now
            spends = tuple(Spend(ref, budgets.slice_at(ref, started), cost) for ref in refs)
            self._queue.put_nowait(_Ended(None, spends, tuple(refs)))

    def depth(self) -> int:
        """Ended requests whose settle is not written yet (queued, or in the batch being written)."""
        return self._queue.qsize() + self._writing

    # -- background

    async def run(self) -> None:
        """The settle writer: batches of ended requests, one transaction each, retried until written."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._writing = len(batch)
            try:
                await self._write(batch)
            finally:
                self._writing = 0
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[_Ended]) -> None:
        backoff = 0.1
        while True:
            now = datetime.now(UTC)
            try:
                states = await self.holds.settle(
                    [e.reservation for e in batch if e.reservation is not None],
                    [s for e in batch for s in e.spends],
                    list(dict.fromkeys(ref for e in batch for ref in e.refs)),
                    now,
                )
                break
            except self._errors as exc:
                # The holds stay (and count) until this goes in: stricter, never looser.
                self._log.warning("settle", "event=shared_budgets_unavailable step=settle error=%r", exc)
                await asyncio.sleep(backoff)
                backoff = min(_MAX_BACKOFF_S, backoff * 2)
        budgets = self._budgets()
        for ref, state in states.items():
            budgets.sync(ref, state, now)
        for ref in states:
            for event in budgets.alerts_for(ref, now):
                await self._claim(event, now)

    async def _claim(self, event: AlertEvent, now: datetime) -> None:
        budget, scope, window_start, kind, threshold = event.key
        try:
            claimed = await self.holds.claim_alert(
                budget, scope, datetime.fromisoformat(window_start), f"{kind}:{threshold}", now, event.message
            )
        except self._errors as exc:
            # Unsure whether another replica sent it: send it (twice is better than never).
            self._log.warning("claim", "event=alert_claim_failed budget=%s kind=%s error=%r", budget, kind, exc)
            claimed = True
        if claimed:
            self._on_alert(event, now)

    async def heartbeat(self) -> None:
        """Renew the lease, drop the holds of replicas gone quiet, and refresh the gauges' numbers."""
        while True:
            await asyncio.sleep(min(HEARTBEAT_S, self.holds.lease_s / 4))
            now = datetime.now(UTC)
            try:
                longest = max((s.rolling_seconds or 0 for s in self._budgets().specs), default=0)
                dropped = await self.holds.heartbeat(timedelta(seconds=longest))
                if dropped:
                    log.warning("event=shared_budget_holds_expired holds=%d", dropped)
                await self.refresh(now)
            except self._errors as exc:
                self._log.warning("heartbeat", "event=shared_budgets_unavailable step=heartbeat error=%r", exc)

    async def drain(self) -> None:
        """Wait (a few seconds at most) until run() has written every queued settle; then cancel it."""
        try:
            await asyncio.wait_for(self._queue.join(), _DRAIN_S)
        except TimeoutError:
            self.lost = self._queue.qsize() + self._writing
            log.error("event=shared_budget_settles_lost count=%d", self.lost)

    async def leave(self) -> None:
        """Give up the lease and this replica's holds (after drain and the writer stopped)."""
        try:
            await asyncio.wait_for(self.holds.leave(), _DRAIN_S)
        except (TimeoutError, *self._errors) as exc:  # type: ignore[misc]
            log.warning("event=shared_budgets_leave_failed error=%r", exc)
