"""Shared fixtures: the fake upstream, the proxy in front of it, and readers of its SQLite rows."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from proxy.server.app import RECORDER, create_app
from proxy.config import Config
from tests.fake_openrouter import fake_app


@pytest.fixture
async def upstream(aiohttp_server: Any) -> TestServer:
    server: TestServer = await aiohttp_server(fake_app())
    return server


@pytest.fixture
def make_config(tmp_path: Path, upstream: TestServer) -> Callable[..., Config]:
    def make(**changes: Any) -> Config:
        base = Config(
            upstream=str(upstream.make_url("/api/v1")),
            db=tmp_path / "usage.db",
            catalog_refresh_s=0,
        )
        return dataclasses.replace(base, **changes)

    return make


@dataclasses.dataclass
class Proxy:
    client: TestClient
    server: TestServer
    app: web.Application
    db_path: Path
    registry: CollectorRegistry

    @property
    def base(self) -> str:
        return str(self.server.make_url("/api/v1"))

    async def settle(self) -> None:
        """Wait until the writer has written everything queued so far."""
        recorder = self.app[RECORDER]
        for _ in range(500):
            if recorder.depth() == 0:
                await asyncio.sleep(0.02)
                if recorder.depth() == 0:
                    return
            await asyncio.sleep(0.01)
        raise AssertionError("recorder never drained")

    def rows(self) -> list[dict[str, Any]]:
        db = sqlite3.connect(self.db_path)
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY started_at")]
        finally:
            db.close()

    async def metrics_text(self) -> str:
        response = await self.client.get("/metrics")
        return await response.text()


@pytest.fixture
def start_proxy(aiohttp_client: Any, make_config: Callable[..., Config]) -> Callable[..., Any]:
    async def start(config: Config | None = None, **changes: Any) -> Proxy:
        config = config or make_config(**changes)
        registry = CollectorRegistry()
        app = create_app(config, registry)
        client: TestClient = await aiohttp_client(app)
        assert isinstance(client.server, TestServer)
        return Proxy(client=client, server=client.server, app=app, db_path=config.db, registry=registry)

    return start


@pytest.fixture
async def proxy(start_proxy: Callable[..., Any]) -> AsyncIterator[Proxy]:
    yield await start_proxy()
