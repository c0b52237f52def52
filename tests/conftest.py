"""Shared fixtures: the fake upstream, the proxy in front of it, and readers of its SQLite rows."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from proxy.server.app import RECORDER, create_app
from proxy.config import Config
from tests.fake_openrouter import fake_app
from tests.pg_cluster import Cluster, find_bin


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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the session (see tests/pg_cluster.py)."""
    bindir = find_bin()
    if bindir is None:
        message = "PostgreSQL's initdb not found (Debian package postgresql; scripts/test.sh installs it)"
        if os.environ.get("OPENROUTER_SPEND_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    cluster = Cluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A fresh, empty database on the session's cluster."""
    if not pg_cluster.running():
        pg_cluster.start()  # a test that stopped it failed before starting it again
    return pg_cluster.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_db_target(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str | Path]:
    """Makes a fresh place for a store, once per engine: the same test runs on SQLite and on PostgreSQL."""
    if request.param == "postgresql":
        cluster: Cluster = request.getfixturevalue("pg_cluster")
        if not cluster.running():
            cluster.start()  # a test that stopped it failed before starting it again
        return cluster.create_database
    names = iter(range(1_000_000))
    return lambda: tmp_path / f"usage{next(names) or ''}.db"


@pytest.fixture
def db_target(new_db_target: Callable[[], str | Path]) -> str | Path:
    return new_db_target()


@pytest.fixture
async def store(db_target: str | Path) -> AsyncIterator[Any]:
    from proxy.store.engine import open_store

    opened = await open_store(db_target)
    try:
        yield opened
    finally:
        await opened.close()
