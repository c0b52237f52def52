"""create_app(config, registry) -> web.Application: typed app keys, routes, and cleanup contexts in order.

create_app does no I/O. Everything that must be closed opens in a cleanup context, in dependency
order: database -> recorder -> HTTP session -> catalog refresh -> forwarder. aiohttp unwinds only the
ones that started, in reverse, so the recorder drains before the database closes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import aiosqlite
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy import __version__
from proxy.budgets.alerts import Notifier
from proxy.server.attribution import Attributor
from proxy.budgets.ledger import Budgets
from proxy.config import Config
from proxy.errors import ConfigError
from proxy.server.forward import Forwarder
from proxy.pricing.generation import Backfill
from proxy.server.guard import BudgetGuard, load_spend, publish_loop
from proxy.metrics import Metrics, metrics_handler
from proxy.store.recorder import Recorder
from proxy.pricing.refresh import CatalogHolder, initial_catalog, record_prices, refresh_loop
from proxy.store.sqlite import open_db, salt
from proxy.web.routes import add_routes as add_web_routes

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
DB = web.AppKey("db", aiosqlite.Connection)
RECORDER = web.AppKey("recorder", Recorder)
SESSION = web.AppKey("session", aiohttp.ClientSession)
CATALOG = web.AppKey("catalog", CatalogHolder)
FORWARDER = web.AppKey("forwarder", Forwarder)
GUARD = web.AppKey("guard", BudgetGuard)
BACKFILL = web.AppKey("backfill", Backfill)
MANAGED_KEY = web.AppKey("managed_key", str)


def create_app(config: Config, registry: CollectorRegistry | None = None) -> web.Application:
    registry = registry if registry is not None else CollectorRegistry()
    metrics_token = _metrics_token(config)
    managed_key = _managed_key(config)
    # The body limit is enforced by the forwarder with our own envelope; aiohttp's cap is a backstop.
    # auto_decompress off: a compressed request body is forwarded as the client compressed it,
    # with its Content-Encoding, instead of being inflated under a header that says gzip.
    app = web.Application(client_max_size=config.max_body_bytes, handler_args={"auto_decompress": False})
    app[CONFIG] = config
    app[MANAGED_KEY] = managed_key or ""
    app[METRICS] = Metrics(
        registry, session_cap=config.metrics.session_cap, project_cap=config.metrics.project_cap
    )
    app[METRICS].set_free_daily_limit(config.free_daily_limit)
    app.cleanup_ctx.extend([_database, _recorder, _http_session, _catalog, _budgets, _backfill, _forwarder])
    if config.metrics.enabled and config.metrics.port is None:
        app.router.add_get("/metrics", metrics_handler(registry, metrics_token))
    elif config.metrics.enabled:
        app.cleanup_ctx.append(_metrics_site(registry, metrics_token))
    app.router.add_get("/healthz", _health)
    if config.ui.enabled:
        # The page and its /-/ endpoints: before the catch-all, so they are never forwarded.
        add_web_routes(app, config, lambda: app[CATALOG], lambda: app[GUARD].budgets if GUARD in app else None)
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _managed_key(config: Config) -> str | None:
    if not config.managed_key_env:
        return None
    key = os.environ.get(config.managed_key_env, "").strip()
    if not key:
        raise ConfigError(f"managed_key_env: environment variable {config.managed_key_env} is not set")
    return key


def _metrics_token(config: Config) -> str | None:
    metrics = config.metrics
    token = os.environ.get(metrics.token_env) if metrics.token_env else None
    if metrics.token_env and not token:
        raise ConfigError(f"metrics.token_env: environment variable {metrics.token_env} is not set")
    host = metrics.host or config.host
    if metrics.enabled and token is None and not _is_loopback(host):
        raise ConfigError(
            f"metrics.token_env: required when /metrics is served on a non-loopback address ({host})"
        )
    return token


async def _database(app: web.Application) -> AsyncIterator[None]:
    db = await open_db(app[CONFIG].db)
    app[DB] = db
    try:
        yield
    finally:
        await db.close()


async def _recorder(app: web.Application) -> AsyncIterator[None]:
    metrics = app[METRICS]
    recorder = Recorder(
        app[DB],
        on_dropped=metrics.recorder_dropped,
        on_write_error=metrics.recorder_write_error,
        on_rows=metrics.recorder_rows,
    )
    metrics.set_recorder_depth_source(recorder.depth)
    app[RECORDER] = recorder
    task = asyncio.create_task(recorder.run(), name="recorder-writer")
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await recorder.drain()


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # No total timeout: it would cut long reasoning streams. limit=0: a thousand concurrent
    # agent streams must not queue behind a connection pool.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s, sock_read=config.read_timeout_s)
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    session = aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        trust_env=False,
    )
    app[SESSION] = session
    try:
        yield
    finally:
        await session.close()


async def _catalog(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    holder = initial_catalog(config.catalog_file)
    app[CATALOG] = holder
    metrics = app[METRICS]
    metrics.set_catalog(len(holder.current), holder.updated_at)
    record_prices(holder.current, app[RECORDER], datetime.now(UTC))
    task = None
    if config.catalog_refresh_s > 0 and config.catalog_file is None:
        task = asyncio.create_task(
            refresh_loop(holder, app[SESSION], config.upstream, app[RECORDER], metrics, config.catalog_refresh_s),
            name="catalog-refresh",
        )
    yield
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


async def _budgets(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if not config.budgets:
        yield
        return
    notifier = Notifier(config.alerts, app[SESSION])
    budgets = Budgets(config.budgets, config.tz)
    rows = await load_spend(app[DB], budgets, datetime.now(UTC))
    guard = BudgetGuard(budgets, app[RECORDER], notifier, app[METRICS])
    guard.publish()
    app[GUARD] = guard
    log.info("event=budgets_loaded budgets=%d rows=%d", len(config.budgets), rows)
    delivery = asyncio.create_task(notifier.run(), name="alert-delivery")
    publisher = asyncio.create_task(publish_loop(guard), name="budget-gauges")
    yield
    publisher.cancel()
    await asyncio.wait([publisher])
    await notifier.close()
    if not delivery.done():
        delivery.cancel()
        await asyncio.wait([delivery])


async def _backfill(app: web.Application) -> AsyncIterator[None]:
    guard = app.get(GUARD)
    metrics = app[METRICS]
    backfill = Backfill(
        app[SESSION],
        app[CONFIG].upstream,
        app[RECORDER],
        settle=guard.settle if guard is not None else (lambda reservation, cost: None),
        on_filled=metrics.observe_backfill,
        delays=app[CONFIG].backfill_delays_s,
    )
    app[BACKFILL] = backfill
    yield
    await backfill.close()


async def _forwarder(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    attributor = Attributor(await salt(app[DB]), config.keys)
    holder = app[CATALOG]
    app[FORWARDER] = Forwarder(
        config,
        app[SESSION],
        app[RECORDER],
        attributor,
        app[METRICS],
        holder.get,
        guard=app.get(GUARD),
        backfill=app[BACKFILL],
        managed_key=app[MANAGED_KEY] or None,
    )
    yield


def _metrics_site(registry: CollectorRegistry, token: str | None):  # type: ignore[no-untyped-def]
    async def serve_metrics(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", metrics_handler(registry, token))
        runner = web.AppRunner(metrics_app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.metrics.host or config.host, config.metrics.port)
        await site.start()
        yield
        await runner.cleanup()

    return serve_metrics


async def _health(request: web.Request) -> web.Response:
    app = request.app
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "catalog_models": len(app[CATALOG].current),
            "catalog_source": app[CATALOG].source,
            "queue_depth": app[RECORDER].depth(),
        }
    )


async def _forward(request: web.Request) -> web.StreamResponse:
    return await request.app[FORWARDER].handle(request)
