"""The request handler: attribution, budget check, upstream call, stream back, tee to the usage parser.

One direction only: each stage hands a value to the next, and only `Forwarder.handle` chains
them. The accounting in `finally:` never awaits, so it runs even when the client has gone or
the handler is being cancelled at shutdown: upstream billed us either way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeVar

import aiohttp
from aiohttp import web
from aiohttp.payload import BytesPayload
from multidict import CIMultiDict

from proxy.store import records
from proxy.pricing.accounting import CacheShares, Exchange, account, estimate
from proxy.server.access import AccessLog
from proxy.server.attribution import Attribution, Attributor, TwoKeys, presented_key
from proxy.budgets.ledger import Decision, Reservation
from proxy.pricing.catalog import Catalog
from proxy.config import Config
from proxy.errors import error_response
from proxy.pricing.endpoints import ProviderPrices
from proxy.pricing.generation import Backfill, needs_backfill
from proxy.pricing.hints import hints_for
from proxy.server.body import BodyModel, DuplicateModel, InflatedTooLarge, body_model
from proxy.server.guard import BudgetGuard, retry_after
from proxy.server.intake import BodyRefused, Intake
from proxy.metrics import Metrics
from proxy.store.recorder import Recorder
from proxy.server.routing import (
    BadPath,
    BadRequest,
    Route,
    check_connection,
    client_headers,
    managed_allows,
    requested_model,
    resolve,
    upstream_headers,
)
from proxy.server.throttle import Throttle
from proxy.usage import BILLED_ENDPOINTS, Usage, UsageParser, parser_for

log = logging.getLogger(__name__)
T = TypeVar("T")

# A non-streamed reply up to this size is read whole and sent with a Content-Length.
_WHOLE_BODY_LIMIT = 8 * 1024 * 1024
_LARGE_BODY = 1024 * 1024
REMAINING_HEADER = "X-Spend-Budget-Remaining-USD"
# Managed mode remembers this many recent generation ids, so a caller can look up its own.
_GENERATIONS_KEPT = 20_000


@dataclass(slots=True)
class _Outcome:
    status: int = 0
    outcome: str = records.OK
    error: str | None = None
    ttfb: float | None = None
    streamed: bool = False


class FirstByte:
    """The first-byte timeout of every request waiting for its upstream, kept by one timer task.

    An `asyncio.timeout` per request armed a timer handle and cancelled it again on every call
    (2.5% of the proxy's instructions per request); here a request only enters a dict and leaves
    it, and `run()` ticks every tenth of the timeout (at most 1 s), cancelling the ones past their
    deadline. A timeout is then late by at most one tick.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.tick_s = min(1.0, timeout_s / 10)
        self._waiting: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            for task, deadline in list(self._waiting.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    async def request(self, make: Callable[[], Awaitable[T]]) -> T:
        """`await make()`, or TimeoutError once timeout_s has passed (as asyncio.timeout raises)."""
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._waiting[task] = asyncio.get_running_loop().time() + self.timeout_s
        try:
            return await make()
        except asyncio.CancelledError:
            # Ours only if nobody else cancelled the task meanwhile (asyncio.timeout's own rule).
            if task in self._expired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            del self._waiting[task]
            self._expired.discard(task)


class Forwarder:
    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        recorder: Recorder,
        attributor: Attributor,
        metrics: Metrics,
        catalog: Callable[[], Catalog | None],
        guard: BudgetGuard | None = None,
        backfill: Backfill | None = None,
        managed_key: str | None = None,
        provider_prices: ProviderPrices | None = None,
        intake: Intake | None = None,
    ) -> None:
        self._config = config
        self._intake = intake
        self._session = session
        self._recorder = recorder
        self._attributor = attributor
        self._metrics = metrics
        self._catalog = catalog
        self._guard = guard
        self._backfill = backfill
        self._managed_key = managed_key
        self._cache_shares = CacheShares()
        self._provider_prices = provider_prices
        self._model_budgets = guard is not None and any(
            spec.scope == "model" or any(name == "model" for name, _ in spec.match) for spec in guard.budgets.specs
        )
        # Managed mode: generation id -> fingerprint of the proxy key whose request made it.
        self._generations: OrderedDict[str, str] = OrderedDict()
        self._drift_log = Throttle(log)
        self._access = AccessLog()
        # Its run() is the app's to start (a cleanup context), like every background task.
        self.first_byte = FirstByte(config.first_byte_timeout_s)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        received = time.perf_counter()
        try:
            # The raw query, not aiohttp's decoded one: `a=%26b` must reach the upstream as sent.
            raw_path, _, raw_query = request.raw_path.partition("?")
            route = resolve(raw_path, raw_query, self._config.upstream)
        except BadPath as exc:
            return error_response(400, f"openrouter-spend: {exc}")
        if route is None:
            return _not_ours(request)
        anthropic = route.endpoint.startswith("messages")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return error_response(
                426,
                "openrouter-spend: WebSocket is not proxied; use HTTP (streaming works over SSE)",
                anthropic=anthropic,
            )
        try:
            # The key a budget matches on must be the key the upstream bills: one credential, and
            # no Connection trick that drops the one we saw while another one crosses.
            check_connection(request.headers)
            key = presented_key(request.headers)
        except (BadRequest, TwoKeys) as exc:
            log.warning("event=bad_credentials endpoint=%s", route.endpoint)
            return error_response(400, f"openrouter-spend: {exc}", anthropic=anthropic)
        if self._managed_key is not None and self._attributor.proxy_key(request.headers) is None:
            log.warning("event=unknown_proxy_key path=%s", route.endpoint)
            return error_response(
                401,
                "openrouter-spend: this proxy holds the OpenRouter key; present one of its proxy keys",
                anthropic=anthropic,
                headers={"WWW-Authenticate": 'Bearer realm="openrouter-spend"'},
            )
        if route.endpoint in BILLED_ENDPOINTS and request.method != "POST":
            # Only a POST is classified billed, so no other method may reach a billed endpoint:
            # an upstream that answered a GET with a body would bill a call with no row.
            return error_response(
                405, f"openrouter-spend: /{route.endpoint} takes POST only", anthropic=anthropic, headers={"Allow": "POST"}
            )
        if self._managed_key is not None and not self._managed_allows(request, route):
            log.warning("event=managed_forbidden method=%s endpoint=%s", request.method, route.endpoint[:200])
            return error_response(
                403,
                f"openrouter-spend: {request.method} /{route.endpoint[:200]} is not forwarded with the proxy's key "
                "(managed mode forwards inference, /models and /generation for your own requests)",
                anthropic=anthropic,
            )
        too_big = self._body_too_large(request, anthropic)
        if too_big is not None:
            return too_big
        try:
            body = await self._intake.read(request) if self._intake is not None else await request.read()
        except BodyRefused as exc:
            return _refused_body(exc, anthropic)
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(anthropic)
        except (aiohttp.ClientPayloadError, ConnectionError) as exc:
            # The client sent a broken body (bad chunking, or it went away): nothing to forward.
            log.warning("event=request_body_unreadable endpoint=%s error=%s", route.endpoint, type(exc).__name__)
            return error_response(400, "openrouter-spend: the request body could not be read", anthropic=anthropic)
        if route.endpoint not in BILLED_ENDPOINTS:
            # /models, /key, /generation, count_tokens, ...: forwarded, not recorded.
            return await self._exchange(request, route, body, None, _Outcome(), anthropic)
        if self._recorder.unavailable and self._config.storage_on_unavailable == "block":
            return error_response(
                503,
                "openrouter-spend: the usage database is unavailable, so billed calls are refused until it is "
                "back (storage.on_unavailable: block)",
                anthropic=anthropic,
                headers={"Retry-After": "5"},
            )
        who = self._attributor.of_key(key, request.headers, route.project)
        return await self._forward_billed(request, route, body, who, anthropic, received)

    def _managed_allows(self, request: web.Request, route: Route) -> bool:
        if not managed_allows(request.method, route.endpoint):
            return False
        if route.endpoint != "generation":
            return True
        ids = request.query.getall("id", [])
        # One id, and one this proxy key's own request produced: the upstream might read either
        # of two ids, and another holder's generations are not this caller's business.
        owner = self._generations.get(ids[0]) if len(ids) == 1 else None
        return owner is not None and owner == self._attributor.of(request.headers).key_fingerprint

    def _remember_generation(self, generation_id: str | None, who: Attribution) -> None:
        if self._managed_key is None or generation_id is None or who.key_fingerprint is None:
            return
        self._generations[generation_id] = who.key_fingerprint
        if len(self._generations) > _GENERATIONS_KEPT:
            self._generations.popitem(last=False)

    def _body_too_large(self, request: web.Request, anthropic: bool) -> web.Response | None:
        length = request.content_length
        if length is not None and length > self._config.max_body_bytes:
            return self._too_large(anthropic)
        return None

    def _too_large(self, anthropic: bool) -> web.Response:
        limit_mb = self._config.max_body_bytes / (1024 * 1024)
        return error_response(
            413,
            f"openrouter-spend: request body is larger than the proxy's limit of {limit_mb:g} MiB (max_body_mb)",
            anthropic=anthropic,
        )

    async def _forward_billed(
        self,
        request: web.Request,
        route: Route,
        body: bytes,
        who: Attribution,
        anthropic: bool,
        received: float,
    ) -> web.StreamResponse:
        started_at = datetime.now(UTC)
        request_id = _request_id()
        try:
            asked = self._asked_model(request, body)
        except DuplicateModel as exc:
            return error_response(400, f"openrouter-spend: {exc}", anthropic=anthropic)
        except InflatedTooLarge as exc:
            log.warning("event=request_body_inflates_too_far endpoint=%s", route.endpoint)
            return error_response(413, f"openrouter-spend: {exc} (max_body_mb)", anthropic=anthropic)
        model_requested = asked.model
        outcome = _Outcome()
        parser_box: list[UsageParser] = []
        decision: Decision | None = None
        if self._guard is not None and self._guard.shared is not None:
            decision = await self._guard.admit(who, model_requested, not asked.known)  # budgets shared with other replicas
        elif self._guard is not None:
            decision = self._guard.decide(who, model_requested, not asked.known)
        self._metrics.in_flight.inc()
        try:
            if decision is not None and not decision.allowed:
                return self._refuse(decision, outcome, anthropic)
            extra = {}
            if decision is not None and decision.remaining_usd is not None:
                extra[REMAINING_HEADER] = str(decision.remaining_usd)
            return await self._exchange(request, route, body, parser_box, outcome, anthropic, received, extra)
        except asyncio.CancelledError:
            # Shutdown grace ran out, or the client left with handler cancellation on. aiohttp
            # fails the request payload with ConnectionResetError only in the second case (at
            # shutdown the transport is closed too, so it cannot tell them apart).
            left = isinstance(request.content.exception(), ConnectionError)
            outcome.outcome = records.ABORTED
            outcome.error = outcome.error or ("client_disconnected" if left else "cancelled")
            raise
        finally:
            self._metrics.in_flight.dec()
            usage = parser_box[0].finish() if parser_box else Usage()
            finished = time.perf_counter()
            exchange = Exchange(
                request_id=request_id,
                started_at=started_at,
                finished_at=datetime.now(UTC),
                method=request.method,
                endpoint=route.endpoint,
                model_requested=model_requested,
                who=who,
                streamed=outcome.streamed,
                status=outcome.status,
                outcome=_final_outcome(outcome, usage),
                error=outcome.error,
                ttfb_ms=None if outcome.ttfb is None else (outcome.ttfb - received) * 1000,
                duration_ms=(finished - received) * 1000,
                hints=hints_for(body, model_requested, usage.cost_reported is not None),
            )
            try:
                accounted = account(
                    exchange,
                    usage,
                    self._catalog(),
                    self._config.web_search_result_usd,
                    self._provider_prices.lookup if self._provider_prices is not None else None,
                )
            except Exception:
                # A pricing bug must not cost the row: record it unpriced and say so.
                log.exception("event=pricing_failed request_id=%s model=%s", request_id, usage.model)
                accounted = account(exchange, usage, None)
            rec = accounted.record
            reservation = decision.reservation if decision is not None and decision.allowed else None
            backfilling = needs_backfill(rec) and self._backfill is not None
            if not backfilling and _billed_unpriced(rec):
                # A 2xx the upstream billed whose usage could not be read (no usage, no generation
                # id to ask about): an estimate, so a spent budget never sees it as free.
                events = parser_box[0].events if parser_box else 0
                guess = estimate(rec, self._catalog(), len(body), events, self._cache_shares.share(rec))
                if guess is None and reservation is not None:
                    guess = max((hold.amount for hold in reservation.holds), default=None)
                if guess is not None:
                    rec = dataclasses.replace(rec, cost_usd=guess, cost_source=records.COST_ESTIMATED)
                    log.warning("event=cost_estimated request_id=%s endpoint=%s usd=%s", request_id, route.endpoint, guess)
            self._recorder.record(rec)
            self._cache_shares.observe(rec)
            self._remember_generation(rec.generation_id, who)
            cost = accounted.breakdown
            self._metrics.observe(
                rec,
                cache_savings_usd=cost.cache_savings if cost else None,
                reasoning_cost_usd=cost.reasoning if cost else None,
                output_cost_usd=(cost.output + cost.reasoning) if cost else None,
                drift=accounted.drift,
            )
            # One line per finished request (`serve --quiet` or `access_log: false` turns it off).
            self._access.write(rec)
            if accounted.drift:
                # Once a minute per model: a stale price drifts on every request until the refresh.
                self._drift_log.warning(
                    rec.model,
                    "event=cost_drift request_id=%s model=%s reported_usd=%s catalog_usd=%s",
                    request_id,
                    rec.model,
                    rec.cost_reported_usd,
                    rec.cost_catalog_usd,
                )
            if backfilling:
                assert self._backfill is not None
                # Billed but the stream ended before its usage: the cost arrives later.
                key = self._managed_key or presented_key(request.headers)
                events = parser_box[0].events if parser_box else 0
                guess = estimate(rec, self._catalog(), len(body), events, self._cache_shares.share(rec))
                settle = functools.partial(self._settle, who=who, asked=asked, served=usage.model)
                self._backfill.enqueue(rec, key, reservation, guess, settle if self._guard is not None else None)
            elif reservation is not None and self._guard is not None:
                self._settle(reservation, rec.cost_usd, who=who, asked=asked, served=usage.model)

    def _asked_model(self, request: web.Request, body: bytes) -> BodyModel:
        """The model budgets match on: parsed only when a budget matches on a model at all.

        A JSON parse costs about 5 ms per MB of prompt; without a model budget the byte scan is
        enough for the row's `model_requested`.
        """
        if not self._model_budgets:
            return BodyModel(requested_model(body), True)
        # The coding the upstream is told about: a Connection header may have dropped it.
        encoding = ", ".join(upstream_headers(request.headers).getall("Content-Encoding", []))
        return body_model(body, encoding, self._config.max_body_bytes)

    def _settle(
        self, reservation: Reservation, cost: Decimal | None, *, who: Attribution, asked: BodyModel, served: str | None
    ) -> None:
        assert self._guard is not None
        if not served or (asked.known and served == asked.model):
            self._guard.settle(reservation, cost)
        elif asked.known:
            # Asked for one model, served by another: budgets on the served one pay as well.
            self._guard.settle(reservation, cost)
            self._guard.charge(who, served, cost, reservation)
        else:
            # Held against every model budget while unknown; now the served model alone pays.
            self._guard.settle(reservation, None)
            self._guard.charge(who, served, cost, None)

    def _refuse(self, decision: Decision, outcome: _Outcome, anthropic: bool) -> web.Response:
        blocking = decision.blocking
        name = blocking.name if blocking is not None else "budget"
        outcome.status, outcome.outcome, outcome.error = 402, records.BLOCKED, f"budget:{name}"[:64]
        log.warning("event=budget_blocked budget=%s message=%r", name, decision.message)
        metadata = {"budget": name, "retry_after_s": retry_after(decision)}
        if blocking is not None:
            metadata.update(
                spent_usd=str(blocking.spent_usd),
                limit_usd=str(blocking.limit_usd),
                resets_at=blocking.resets_at.isoformat() if blocking.resets_at else None,
            )
        return error_response(
            402,
            decision.message,
            anthropic=anthropic,
            metadata=metadata,
            headers={
                # SDKs retry 402s never, but 429/5xx-minded wrappers might: say it plainly.
                "x-should-retry": "false",
                "Retry-After": str(retry_after(decision)),
                REMAINING_HEADER: str(decision.remaining_usd if decision.remaining_usd is not None else 0),
            },
        )

    async def _exchange(
        self,
        request: web.Request,
        route: Route,
        body: bytes,
        parser_box: list[UsageParser] | None,
        outcome: _Outcome,
        anthropic: bool,
        received: float | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        config = self._config
        headers = upstream_headers(request.headers, self._managed_key)
        sent = time.perf_counter()
        try:
            upstream = await self.first_byte.request(
                functools.partial(
                    self._session.request,
                    request.method,
                    route.upstream_url,
                    data=_payload(body),
                    headers=headers,
                    allow_redirects=False,
                )
            )
        except TimeoutError:
            self._metrics.upstream_error("timeout")
            outcome.status, outcome.outcome, outcome.error = 504, records.PROXY_ERROR, "upstream_timeout"
            log.warning("event=upstream_timeout endpoint=%s after_s=%g", route.endpoint, config.first_byte_timeout_s)
            return error_response(
                504,
                f"openrouter-spend: OpenRouter did not answer within {config.first_byte_timeout_s:g} s",
                anthropic=anthropic,
            )
        except aiohttp.ClientError as exc:
            self._metrics.upstream_error("connect")
            outcome.status, outcome.outcome, outcome.error = 502, records.PROXY_ERROR, "upstream_unreachable"
            log.warning("event=upstream_unreachable endpoint=%s error=%s", route.endpoint, type(exc).__name__)
            return error_response(
                502,
                f"openrouter-spend: cannot reach the upstream ({type(exc).__name__})",
                anthropic=anthropic,
            )
        try:
            outcome.ttfb = time.perf_counter()
            outcome.status = upstream.status
            if received is not None:
                # Our own share of the latency: everything before the upstream call was sent.
                self._metrics.observe_overhead(sent - received)
            if upstream.status >= 400:
                outcome.outcome = records.UPSTREAM_ERROR
                outcome.error = f"http_{upstream.status}"
                self._metrics.upstream_error("http_5xx" if upstream.status >= 500 else "http_4xx")
                # The body goes back to the client untouched; the log says it happened, not what it said.
                log.info("event=upstream_http_error status=%d endpoint=%s", upstream.status, route.endpoint)
            content_type = upstream.headers.get("Content-Type", "")
            outcome.streamed = content_type.startswith("text/event-stream")
            if parser_box is not None:
                parser_box.append(
                    parser_for(route.endpoint, outcome.streamed, upstream.headers.get("X-Generation-Id"))
                )
            parser = parser_box[0] if parser_box else None
            response_headers = client_headers(upstream.headers)
            if extra_headers:
                response_headers.update(extra_headers)
            length = upstream.content_length
            if not outcome.streamed and length is not None and length <= _WHOLE_BODY_LIMIT:
                return await self._whole(upstream, response_headers, parser, outcome, anthropic)
            return await self._stream(request, upstream, response_headers, parser, outcome)
        finally:
            # Returns a fully read connection to the pool; one cut short was closed already.
            upstream.release()

    async def _whole(
        self,
        upstream: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        parser: UsageParser | None,
        outcome: _Outcome,
        anthropic: bool,
    ) -> web.StreamResponse:
        try:
            payload = await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._broken_before_reply(outcome, exc, anthropic)
        if parser is not None:
            parser.feed(payload)
        return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=payload)

    def _broken_before_reply(self, outcome: _Outcome, exc: BaseException, anthropic: bool) -> web.Response:
        reason = "timeout" if isinstance(exc, TimeoutError) else "reset"
        self._metrics.upstream_error(reason)
        outcome.status, outcome.outcome, outcome.error = 502, records.ABORTED, f"upstream_{reason}"
        log.warning("event=upstream_reply_broken status=%d error=%s", outcome.status, type(exc).__name__)
        return error_response(
            502, f"openrouter-spend: the upstream connection broke ({type(exc).__name__})", anthropic=anthropic
        )

    async def _stream(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        parser: UsageParser | None,
        outcome: _Outcome,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                try:
                    await response.write(chunk)
                except ConnectionError:
                    outcome.outcome, outcome.error = records.ABORTED, "client_disconnected"
                    # Stop paying for tokens nobody reads: closing drops the upstream connection.
                    upstream.close()
                    return response
                if parser is not None:
                    parser.feed(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else "reset"
            self._metrics.upstream_error("stream_error" if reason == "reset" else reason)
            outcome.outcome, outcome.error = records.ABORTED, f"upstream_{reason}"
            log.warning("event=upstream_stream_broken status=%d error=%s", upstream.status, type(exc).__name__)
            # End the client's connection without the final chunk, so it sees a broken stream
            # instead of a reply that merely looks short.
            if request.transport is not None:
                request.transport.close()
            return response
        try:
            await response.write_eof()
        except ConnectionError:
            pass
        return response


def _request_id() -> str:
    """A UUIDv7 in hex (RFC 9562): the Unix millisecond, then 74 random bits.

    Time-ordered, so each row's primary key lands at the end of the id index: a random UUID4 put
    every row on a random page of it, which the commit then wrote out, about a quarter of the
    writer's CPU per row at 60,000 rows and more as the table grows. Made by hand, without a UUID
    object (1% of the proxy's CPU).
    """
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    raw[6] = raw[6] & 0x0F | 0x70  # version 7
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 9562 variant
    return raw.hex()


def _payload(body: bytes) -> bytes | BytesPayload | None:
    if not body:
        return None
    if len(body) <= _LARGE_BODY:
        return body
    # aiohttp warns that a large bytes body "might lock the event loop"; it is one buffered
    # transport write of bytes we already hold, cheaper than any chunking we could do.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        return BytesPayload(body)


def _billed_unpriced(rec: records.UsageRecord) -> bool:
    return (
        rec.cost_usd is None
        and 200 <= rec.status < 300
        and rec.outcome in (records.OK, records.ABORTED, records.UPSTREAM_ERROR)
    )


def _final_outcome(outcome: _Outcome, usage: Usage) -> str:
    if outcome.outcome == records.OK and usage.error:
        return records.UPSTREAM_ERROR
    return outcome.outcome


def _refused_body(exc: BodyRefused, anthropic: bool) -> web.Response:
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    response = error_response(exc.status, str(exc), anthropic=anthropic, headers=headers)
    # The rest of the body is never read: close instead of draining it (or waiting on a stall).
    response.force_close()
    return response


def _not_ours(request: web.Request) -> web.StreamResponse:
    if request.method == "HEAD":
        # Claude Code probes `HEAD <base>/api/hello`; answer at once, record nothing.
        return web.Response(status=200)
    return error_response(404, f"openrouter-spend: no route for {request.path}; use /api/v1/... or /v1/...")

