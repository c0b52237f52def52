"""Backfill: the billed cost of a stream cut before its usage chunk, looked up later via GET /generation.

OpenRouter bills a request whose stream was cut (client gone, upstream reset) but the usage never
reached us. `/generation?id=` knows it, a little later: retry with backoff for a few minutes, with
the same key the client used (held in memory only, never written). When it cannot be had, the row
gets a catalog estimate from what was requested, marked `estimated`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp

from proxy.store import records
from proxy.budgets.ledger import Reservation
from proxy.store.recorder import Recorder, Statement
from proxy.store.records import UsageRecord
from proxy.usage._values import count, mapping, money

log = logging.getLogger(__name__)


_FILL = (
    "UPDATE requests SET cost_reported_usd = ?, cost_usd = ?, cost_source = ?, "
    "input_tokens = COALESCE(input_tokens, ?), output_tokens = COALESCE(output_tokens, ?), "
    "cached_tokens = COALESCE(cached_tokens, ?), reasoning_tokens = COALESCE(reasoning_tokens, ?), "
    "provider = COALESCE(provider, ?) WHERE id = ?"
)


def _fixed(amount: Decimal) -> str:
    # Fixed point like the recorder writes it: str() gives '1E-7', which the rollup cannot sum.
    return format(amount, "f")


def _coalesce(had: int | None, filled: int | None) -> int | None:
    return had if had is not None else filled


def needs_backfill(rec: UsageRecord) -> bool:
    """Billed (the upstream started answering) but no cost came with it.

    An aborted stream priced from the catalog counts only the tokens seen before the cut (an
    Anthropic stream's message_start says 1 output token): the billed cost still has to be asked for.
    """
    unpriced = rec.cost_usd is None or (rec.outcome == records.ABORTED and rec.cost_reported_usd is None)
    return (
        unpriced
        and rec.generation_id is not None
        and rec.outcome in (records.ABORTED, records.OK, records.UPSTREAM_ERROR)
        and rec.status < 400
    )


@dataclass(frozen=True, slots=True)
class Filled:
    cost: Decimal
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    provider: str | None


def parse_generation(body: Any) -> Filled | None:
    """The `data` of a /generation reply, or None if it has no usable cost yet."""
    data = mapping(mapping(body).get("data"))
    cost = money(data.get("total_cost"))
    if cost is None:
        return None
    provider = data.get("provider_name")
    return Filled(
        cost=cost,
        input_tokens=count(data.get("tokens_prompt")),
        output_tokens=count(data.get("tokens_completion")),
        cached_tokens=count(data.get("native_tokens_cached")),
        reasoning_tokens=count(data.get("native_tokens_reasoning")),
        provider=provider if isinstance(provider, str) else None,
    )


_ESTIMATE = "UPDATE requests SET cost_usd = ?, cost_source = ? WHERE id = ? AND cost_usd IS NULL"


@dataclass(slots=True)
class _Job:
    rec: UsageRecord
    key: str | None
    reservation: Reservation | None
    estimate: Decimal | None


class Backfill:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream: str,
        recorder: Recorder,
        settle: Callable[[Reservation, Decimal | None], None],
        on_filled: Callable[[UsageRecord, UsageRecord], None],
        delays: tuple[float, ...],
        max_jobs: int = 1000,
    ) -> None:
        self._session = session
        self._upstream = upstream
        self._recorder = recorder
        self._settle = settle
        self._on_filled = on_filled
        self._delays = delays
        self._max_jobs = max_jobs
        self._tasks: set[asyncio.Task[None]] = set()

    def enqueue(
        self, rec: UsageRecord, key: str | None, reservation: Reservation | None, estimate: Decimal | None = None
    ) -> None:
        """Called from a handler's finally: never awaits. The task set keeps strong references."""
        job = _Job(rec, key, reservation, estimate)
        if len(self._tasks) >= self._max_jobs:
            log.warning("event=backfill_skipped reason=too_many_pending request_id=%s", rec.id)
            self._finish(job, None)
            return
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"backfill-{rec.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def _run(self, job: _Job) -> None:
        filled: Filled | None = None
        try:
            for delay in self._delays:
                await asyncio.sleep(delay)
                filled = await self._lookup(job)
                if filled is not None:
                    break
        finally:
            self._finish(job, filled)

    async def _lookup(self, job: _Job) -> Filled | None:
        headers = {"Accept-Encoding": "identity"}
        if job.key:
            headers["Authorization"] = f"Bearer {job.key}"
        try:
            async with self._session.get(
                self._upstream + "/generation", params={"id": job.rec.generation_id or ""}, headers=headers
            ) as response:
                if response.status != 200:
                    return None
                return parse_generation(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.info("event=backfill_retry request_id=%s error=%s", job.rec.id, type(exc).__name__)
            return None

    def _finish(self, job: _Job, filled: Filled | None) -> None:
        rec = job.rec
        if filled is None:
            # Keep a partial catalog price if the stream had one; else fall back to the estimate.
            fallback = rec.cost_usd if rec.cost_usd is not None else job.estimate
            log.warning(
                "event=backfill_failed request_id=%s generation_id=%s fallback_usd=%s",
                rec.id,
                rec.generation_id,
                fallback,
            )
            if rec.cost_usd is None and job.estimate is not None:
                self._recorder.record(Statement(_ESTIMATE, (_fixed(job.estimate), records.COST_ESTIMATED, rec.id)))
                self._on_filled(rec, dataclasses.replace(rec, cost_usd=job.estimate, cost_source=records.COST_ESTIMATED))
            if job.reservation is not None:
                self._settle(job.reservation, fallback)
            return
        self._recorder.record(
            Statement(
                _FILL,
                (
                    _fixed(filled.cost),
                    _fixed(filled.cost),
                    records.COST_GENERATION,
                    filled.input_tokens,
                    filled.output_tokens,
                    filled.cached_tokens,
                    filled.reasoning_tokens,
                    filled.provider,
                    rec.id,
                ),
            )
        )
        # The row as the UPDATE leaves it (COALESCE keeps counts we had), so metrics can add
        # just the difference to what they counted when the request ended.
        after = dataclasses.replace(
            rec,
            cost_usd=filled.cost,
            cost_reported_usd=filled.cost,
            cost_source=records.COST_GENERATION,
            input_tokens=_coalesce(rec.input_tokens, filled.input_tokens),
            output_tokens=_coalesce(rec.output_tokens, filled.output_tokens),
            cached_tokens=_coalesce(rec.cached_tokens, filled.cached_tokens),
            reasoning_tokens=_coalesce(rec.reasoning_tokens, filled.reasoning_tokens),
            provider=rec.provider or filled.provider,
        )
        self._on_filled(rec, after)
        if job.reservation is not None:
            self._settle(job.reservation, filled.cost)
        log.info("event=backfilled request_id=%s cost_usd=%s", rec.id, filled.cost)
