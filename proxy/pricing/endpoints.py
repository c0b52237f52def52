"""Per-provider prices: `GET {upstream}/models/{author}/{slug}/endpoints`, fetched lazily for the models
requests actually use, kept in memory and refetched once older than the catalog refresh interval.

One model costs different amounts at different providers, and OpenRouter bills the provider that
served the request (`provider` in the reply). A failed fetch keeps the last good prices; until the
first one arrives a model is priced at its catalog price.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from proxy.pricing.catalog import ModelPricing, pricing_from_json

log = logging.getLogger(__name__)

# Retry a failed fetch no sooner than this, so a broken endpoint is not asked on every request.
_RETRY_S = 300.0
_MAX_MODELS = 2000
_MAX_FETCHES = 8


def parse_endpoints(payload: Any) -> dict[str, ModelPricing]:
    """Provider name (case-folded) -> its price for the model; malformed endpoints are skipped."""
    data = payload.get("data") if isinstance(payload, Mapping) else None
    endpoints = data.get("endpoints") if isinstance(data, Mapping) else None
    if not isinstance(endpoints, list):
        raise ValueError("endpoints listing has no `data.endpoints` array")
    prices: dict[str, ModelPricing] = {}
    for raw in endpoints:
        if not isinstance(raw, Mapping):
            continue
        name = raw.get("provider_name")
        if not isinstance(name, str) or not name:
            continue
        try:
            pricing = pricing_from_json(raw.get("pricing"))
        except ValueError:
            continue
        # Several endpoints of one provider (quantizations, regions): the first listed is kept.
        prices.setdefault(name.casefold(), pricing)
    return prices


class ProviderPrices:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream: str,
        max_age_s: float,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._upstream = upstream
        self._max_age_s = max_age_s
        self._headers = {"Accept-Encoding": "identity", **(headers or {})}
        self._clock = clock
        self._prices: dict[str, dict[str, ModelPricing]] = {}
        # The catalog price a model had when its endpoints were fetched: once the catalog moves on,
        # the endpoint prices are stale until fetched again, and the catalog's own price is used.
        self._basis: dict[str, ModelPricing | None] = {}
        self._fetched: dict[str, float] = {}  # model id -> when last fetched or tried
        self._failed: set[str] = set()  # models whose last fetch failed
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def lookup(self, model_id: str, provider: str | None, listed: ModelPricing | None = None) -> ModelPricing | None:
        """The price at `provider`, from memory; asks for the model's endpoints when they are unknown
        or stale. `listed` is the catalog's price now. Never awaits: it runs in the request's accounting."""
        moved = model_id in self._prices and self._basis.get(model_id) != listed
        self._want(model_id, listed, force=moved)
        if not provider or moved:
            return None
        return self._prices.get(model_id, {}).get(provider.casefold())

    def known(self, model_id: str) -> dict[str, ModelPricing]:
        return dict(self._prices.get(model_id, {}))

    async def wait(self) -> None:
        """Until the fetches in flight are done (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    def _want(self, model_id: str, listed: ModelPricing | None, force: bool = False) -> None:
        # Variants (`x:free`) and aliases (`~x`) have their own catalog entries and no endpoints path.
        if ":" in model_id or model_id.startswith("~") or "/" not in model_id or model_id in self._tasks:
            return
        last = self._fetched.get(model_id)
        now = self._clock()
        if last is not None:
            # After a failure wait _RETRY_S whatever happened; otherwise until stale or the catalog moved.
            if model_id in self._failed or model_id not in self._prices:
                if now - last < _RETRY_S:
                    return
            elif not force and (self._max_age_s <= 0 or now - last < self._max_age_s):
                return
        if len(self._tasks) >= _MAX_FETCHES or (last is None and len(self._fetched) >= _MAX_MODELS):
            return
        self._fetched[model_id] = now
        task = asyncio.get_running_loop().create_task(self._fetch(model_id, listed), name=f"endpoints-{model_id}")
        self._tasks[model_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(model_id, None))

    async def _fetch(self, model_id: str, listed: ModelPricing | None) -> None:
        url = f"{self._upstream}/models/{model_id}/endpoints"
        try:
            async with self._session.get(url, headers=self._headers) as response:
                response.raise_for_status()
                prices = parse_endpoints(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._failed.add(model_id)
            log.warning(
                "event=endpoints_fetch_failed model=%s error=%s keeping_providers=%d",
                model_id,
                type(exc).__name__,
                len(self._prices.get(model_id, {})),
            )
            return
        self._failed.discard(model_id)
        if prices:
            self._prices[model_id] = prices
            self._basis[model_id] = listed
        log.info("event=endpoints_fetched model=%s providers=%d", model_id, len(prices))
