"""CatalogHolder: the catalog in force, swapped whole by a refresh task that polls `{upstream}/models`.

A failed refresh keeps the last good catalog and says so (a log line and a metric). Each price
change is written to `model_prices` with the time it was seen, through the single writer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from proxy.pricing.catalog import Catalog, load_embedded, parse_models, pricing_fingerprint, screen
from proxy.metrics import Metrics
from proxy.store.recorder import Recorder, Statement
from proxy.store.sqlite import encode_time

log = logging.getLogger(__name__)

# A row only when the price differs from the model's latest one, so every change is kept with its
# time, a return to an earlier price (A -> B -> A) included.
_RECORD_PRICE = (
    "INSERT OR IGNORE INTO model_prices (model_id, pricing, first_seen_at) SELECT ?1, ?2, ?3 WHERE "
    "COALESCE((SELECT pricing FROM model_prices WHERE model_id = ?1 ORDER BY first_seen_at DESC LIMIT 1), '') != ?2"
)
# The 2026 listing is about 1 MB for 421 models: 16 MiB is room for 16 times that, and bounds
# what a broken or hostile upstream can make the proxy hold (counted after decompression).
MAX_LISTING_BYTES = 16 * 1024 * 1024
MAX_MODELS = 20_000
# The last good listing, so `models` and `estimate` price with what the proxy last fetched.
# An upsert both engines speak: PostgreSQL has no INSERT OR REPLACE (its translation refuses one).
_STORE_LISTING = (
    "INSERT INTO meta (key, value) VALUES ('catalog_listing', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


class CatalogHolder:
    def __init__(self, catalog: Catalog, source: str) -> None:
        self.current = catalog
        self.source = source
        # A snapshot or saved listing is as old as its fetch, not as the moment we loaded it:
        # the catalog-age panel and the CatalogStale alert must tell the truth about it.
        fetched = catalog.fetched_at
        self.updated_at = fetched.timestamp() if fetched is not None else time.time()

    def get(self) -> Catalog:
        return self.current


def initial_catalog(path: Path | None) -> CatalogHolder:
    if path is None:
        return CatalogHolder(load_embedded(), "embedded")
    payload = json.loads(path.read_text(encoding="utf-8"))
    return CatalogHolder(parse_models(payload), str(path))


def record_prices(catalog: Catalog, recorder: Recorder, seen_at: datetime) -> None:
    when = encode_time(seen_at)
    for entry in catalog:
        recorder.record(Statement(_RECORD_PRICE, (entry.id, pricing_fingerprint(entry), when)))


async def refresh_once(
    holder: CatalogHolder,
    session: aiohttp.ClientSession,
    upstream: str,
    recorder: Recorder,
    metrics: Metrics,
    max_bytes: int = MAX_LISTING_BYTES,
) -> bool:
    try:
        async with session.get(upstream + "/models", headers={"Accept-Encoding": "identity"}) as response:
            response.raise_for_status()
            payload = json.loads(await _read_capped(response, max_bytes))
        if isinstance(payload, dict) and isinstance(payload.get("data"), list) and len(payload["data"]) > MAX_MODELS:
            raise ValueError(f"the listing has more than {MAX_MODELS} models")
        catalog = parse_models(payload, fetched_at=datetime.now(UTC))
        if len(catalog) == 0:
            raise ValueError("the listing has no models")
        catalog, refused = screen(catalog, holder.current)
        if refused:
            metrics.catalog_refresh_failed()
            log.warning(
                "event=catalog_prices_refused models=%d first=%s kept=last_good_price",
                len(refused),
                refused[0][:100],
            )
    except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
        metrics.catalog_refresh_failed()
        log.warning(
            "event=catalog_refresh_failed error=%s keeping_models=%d source=%s",
            type(exc).__name__,
            len(holder.current),
            holder.source,
        )
        return False
    holder.current, holder.source, holder.updated_at = catalog, upstream, time.time()
    metrics.set_catalog(len(catalog), holder.updated_at)
    record_prices(catalog, recorder, datetime.now(UTC))
    listing = {"fetchedAt": catalog.fetched_at.isoformat() if catalog.fetched_at else None, "data": payload.get("data")}
    recorder.record(Statement(_STORE_LISTING, (json.dumps(listing, separators=(",", ":")),)))
    log.info("event=catalog_refreshed models=%d", len(catalog))
    return True


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    if response.content_length is not None and response.content_length > max_bytes:
        raise ValueError(f"the listing is over {max_bytes} bytes")
    body = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        body += chunk
        if len(body) > max_bytes:
            raise ValueError(f"the listing is over {max_bytes} bytes")
    return bytes(body)


async def refresh_loop(
    holder: CatalogHolder,
    session: aiohttp.ClientSession,
    upstream: str,
    recorder: Recorder,
    metrics: Metrics,
    interval_s: float,
) -> None:
    while True:
        ok = await refresh_once(holder, session, upstream, recorder, metrics)
        # After a failure try again sooner, but never hammer the upstream.
        await asyncio.sleep(interval_s if ok else min(interval_s, 300.0))
