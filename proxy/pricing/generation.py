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


# Counts: a stream that ran to its usage block keeps its own counts (COALESCE(ours, theirs)); an
# aborted one saw only a part, so the generation's billed counts win (COALESCE(theirs, ours)).
# cache_write_tokens is not in /generation: the row keeps what the stream said.
_COUNT_COLUMNS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "web_search_requests")


def _fill_sql(theirs_first: bool) -> str:
    counts = ", ".join(
        f"{c} = COALESCE(?, {c})" if theirs_first else f"{c} = COALESCE({c}, ?)" for c in _COUNT_COLUMNS
    )
    return (
        "UPDATE requests SET cost_reported_usd = ?, cost_usd = ?, cost_source = ?, upstream_cost_usd = ?, "
        f"is_byok = COALESCE(?, is_byok), {counts}, provider = COALESCE(provider, ?) WHERE id = ?"
    )


_FILL = _fill_sql(theirs_first=False)
_FILL_ABORTED = _fill_sql(theirs_first=True)


def _fixed(amount: Decimal) -> str:
    # Fixed point like the recorder writes it: str() gives '1E-7', which the rollup cannot sum.
    return format(amount, "f")


def _coalesce(had: int | None, filled: int | None) -> int | None:
    return had if had is not None else filled


def needs_backfill(rec: UsageRecord) -> bool:
    """Billed (the upstream started answering) but the bill did not come with it.

    An aborted stream priced from the catalog counts only the tokens seen before the cut (an
    Anthropic stream's message_start says 1 output token), and a stream that ended without a
    reported `cost` was priced from the catalog: the billed cost still has to be asked for. So does
    a BYOK reply without the provider's charge (`upstream_inference_cost`).
    """
    unreported = rec.cost_reported_usd is None and (rec.outcome == records.ABORTED or rec.streamed)
    byok_unknown = bool(rec.is_byok) and rec.upstream_cost_usd is None
    unpriced = rec.cost_usd is None or unreported or byok_unknown
    return (
        unpriced
        and rec.generation_id is not None
        and rec.outcome in (records.ABORTED, records.OK, records.UPSTREAM_ERROR)
        and rec.status < 400
    )


@dataclass(frozen=True, slots=True)
class Filled:
    cost: Decimal  # the money spent: OpenRouter's total_cost, plus the provider's charge with BYOK
    reported: Decimal  # OpenRouter's total_cost (with BYOK its fee alone)
    upstream: Decimal | None  # with BYOK, what the provider charged the user's own key
    is_byok: bool | None
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    web_search_requests: int | None
    provider: str | None


def parse_generation(body: Any) -> Filled | None:
    """The `data` of a /generation reply, or None if it has no usable cost yet.

    Billing is on the provider's native token counts (`native_tokens_*`); `tokens_prompt` and
    `tokens_completion` are normalized counts and would not match the cache counts beside them.
    """
    data = mapping(mapping(body).get("data"))
    reported = money(data.get("total_cost"))
    if reported is None:
        return None
    byok = data.get("is_byok")
    is_byok = byok if isinstance(byok, bool) else None
    # Non-BYOK generations may show upstream_inference_cost too: it is inside total_cost then.
    upstream = money(data.get("upstream_inference_cost")) if is_byok else None
    provider = data.get("provider_name")
    return Filled(
        cost=reported + (upstream or 0),
        reported=reported,
        upstream=upstream,
        is_byok=is_byok,
        input_tokens=count(data.get("native_tokens_prompt")),
        output_tokens=count(data.get("native_tokens_completion")),
        cached_tokens=count(data.get("native_tokens_cached")),
        reasoning_tokens=count(data.get("native_tokens_reasoning")),
        web_search_requests=None,
        provider=provider if isinstance(provider, str) else None,
    )


_ESTIMATE = "UPDATE requests SET cost_usd = ?, cost_source = ? WHERE id = ? AND cost_usd IS NULL"


@dataclass(slots=True)
class _Job:
    rec: UsageRecord
    key: str | None
    reservation: Reservation | None
    estimate: Decimal | None
    settle: Callable[[Reservation, Decimal | None], None] | None = None


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
        self,
        rec: UsageRecord,
        key: str | None,
        reservation: Reservation | None,
        estimate: Decimal | None = None,
        settle: Callable[[Reservation, Decimal | None], None] | None = None,
    ) -> None:
        """Called from a handler's finally: never awaits. The task set keeps strong references.

        `settle`, if given, replaces the default for this job (the forwarder's also charges the
        model that served)."""
        job = _Job(rec, key, reservation, estimate, settle)
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
                (job.settle or self._settle)(job.reservation, fallback)
            return
        theirs_first = rec.outcome == records.ABORTED
        counts = (filled.input_tokens, filled.output_tokens, filled.cached_tokens, filled.reasoning_tokens,
                  filled.web_search_requests)
        self._recorder.record(
            Statement(
                _FILL_ABORTED if theirs_first else _FILL,
                (
                    _fixed(filled.reported),
                    _fixed(filled.cost),
                    records.COST_GENERATION,
                    None if filled.upstream is None else _fixed(filled.upstream),
                    None if filled.is_byok is None else int(filled.is_byok),
                    *counts,
                    filled.provider,
                    rec.id,
                ),
            )
        )

        def pick(had: int | None, got: int | None) -> int | None:
            return _coalesce(got, had) if theirs_first else _coalesce(had, got)

        # The row as the UPDATE leaves it, so metrics can add just the difference to what they
        # counted when the request ended.
        after = dataclasses.replace(
            rec,
            cost_usd=filled.cost,
            cost_reported_usd=filled.reported,
            upstream_cost_usd=filled.upstream,
            is_byok=filled.is_byok if filled.is_byok is not None else rec.is_byok,
            cost_source=records.COST_GENERATION,
            input_tokens=pick(rec.input_tokens, filled.input_tokens),
            output_tokens=pick(rec.output_tokens, filled.output_tokens),
            cached_tokens=pick(rec.cached_tokens, filled.cached_tokens),
            reasoning_tokens=pick(rec.reasoning_tokens, filled.reasoning_tokens),
            web_search_requests=pick(rec.web_search_requests, filled.web_search_requests),
            provider=rec.provider or filled.provider,
        )
        self._on_filled(rec, after)
        if job.reservation is not None:
            (job.settle or self._settle)(job.reservation, filled.cost)
        log.info("event=backfilled request_id=%s cost_usd=%s", rec.id, filled.cost)
