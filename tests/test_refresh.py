"""Catalog refresh against a hostile or broken listing: size caps and absurd prices keep the last good catalog."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.metrics import Metrics
from proxy.pricing.catalog import parse_models
from proxy.pricing.refresh import CatalogHolder, refresh_once
from proxy.store.recorder import Recorder
from proxy.store.sqlite import open_db


def listing(**prices: dict[str, str]) -> dict[str, Any]:
    base = {"a/cheap": {"prompt": "0.000001", "completion": "0.000002"}, "openrouter/auto": {"prompt": "-1", "completion": "-1"}}
    base.update(prices)
    return {"data": [{"id": k, "name": k, "pricing": v} for k, v in base.items()]}


class Listing:
    def __init__(self) -> None:
        self.body = b""
        self.chunked = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self.chunked:
            return web.Response(body=self.body, content_type="application/json")
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(self.body), 65536):
            await response.write(self.body[i : i + 65536])
        await response.write_eof()
        return response


@pytest.fixture
async def served(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[tuple[Listing, Any]]:
    source = Listing()
    app = web.Application()
    app.router.add_get("/api/v1/models", source.handle)
    server = await aiohttp_server(app)
    db = await open_db(tmp_path / "u.db")
    metrics = Metrics(CollectorRegistry())
    async with aiohttp.ClientSession() as session:

        async def refresh(holder: CatalogHolder, **kw: Any) -> bool:
            return await refresh_once(holder, session, str(server.make_url("/api/v1")), Recorder(db), metrics, **kw)

        yield source, refresh
    await db.close()


async def test_a_listing_over_the_size_cap_keeps_the_last_good_catalog(served: Any) -> None:
    source, refresh = served
    holder = CatalogHolder(parse_models(listing()), "test")
    big = listing(**{f"m/{i:05d}": {"prompt": "0.000001", "completion": "0.000002"} for i in range(3000)})
    source.body = json.dumps(big).encode()
    for chunked in (False, True):  # declared length, and none: counted while reading
        source.chunked = chunked
        assert not await refresh(holder, max_bytes=len(source.body) - 1)
        assert len(holder.current) == 2 and holder.source == "test"
    assert await refresh(holder, max_bytes=len(source.body))
    assert len(holder.current) == 3002


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt": "3", "completion": "0.000002"},  # $3 a token: a per-million price sent per token
        {"prompt": "0.000001", "completion": "-0.5"},
        {"prompt": "0.000001", "completion": "0.000002", "request": "1000"},
        {"prompt": "0.000001", "completion": "0.000002", "overrides": [{"min_prompt_tokens": 1, "prompt": "7"}]},
    ],
)
async def test_absurd_prices_keep_the_last_good_price(served: Any, bad: dict[str, Any]) -> None:
    source, refresh = served
    holder = CatalogHolder(parse_models(listing()), "test")
    source.body = json.dumps(listing(**{"a/cheap": bad, "b/new-and-absurd": bad, "c/new": {"prompt": "0.0006", "completion": "0.0006"}})).encode()
    assert await refresh(holder)
    catalog = holder.current
    cheap = catalog.get("a/cheap")
    assert cheap is not None and cheap.pricing.prompt == D("0.000001") and cheap.pricing.completion == D("0.000002")
    assert catalog.get("b/new-and-absurd") is None
    assert catalog.get("c/new") is not None
    auto = catalog.get("openrouter/auto")
    assert auto is not None and auto.pricing.variable  # -1 is OpenRouter's marker, not an absurd price
