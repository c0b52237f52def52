"""create_app(config, registry) -> web.Application: typed app keys, routes, and cleanup contexts in order.

create_app does no I/O. Everything that must be closed opens in a cleanup context, in dependency
order: database -> window spend -> recorder -> HTTP session -> catalog refresh -> forwarder. aiohttp
unwinds only the ones that started, in reverse, so the recorder drains before the database closes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime

import aiohttp
import yarl
import aiosqlite
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy import __version__
from proxy.budgets.alerts import Notifier
from proxy.server.attribution import Attributor, fingerprint
from proxy.budgets.ledger import Budgets
from proxy.config import Config
from proxy.errors import ConfigError, error_response
from proxy.server.forward import Forwarder
from proxy.pricing.books import Reconciler
from proxy.pricing.endpoints import ProviderPrices
from proxy.pricing.generation import Backfill
from proxy.server.admin import Admin
from proxy.server.admin import add_off_routes as add_admin_off_routes
from proxy.server.guard import BudgetGuard, load_spend, publish_loop
from proxy.server.runtime import Runtime
from proxy.server.shared import SharedLedger, replica_id
from proxy.server.intake import Intake
from proxy.server.workers import WorkerSlot, own_metrics_site, summed_handler
from proxy.metrics import Metrics, metrics_handler
from proxy.store.recorder import Recorder
from proxy.store.holds import HoldStore
from proxy.store.sqlite_holds import SqliteHolds
from proxy.pricing.refresh import CatalogHolder, initial_catalog, record_prices, refresh_loop
from proxy.store.engine import SqliteStore, Store, open_store, spend_by_window
from proxy.store.sqlite import open_db, salt
from proxy.web.routes import add_routes as add_web_routes

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
DB = web.AppKey("db", aiosqlite.Connection)  # SQLite only; engine-neutral code uses STORE
STORE = web.AppKey("store", Store)
RECORDER = web.AppKey("recorder", Recorder)
SESSION = web.AppKey("session", aiohttp.ClientSession)
CATALOG = web.AppKey("catalog", CatalogHolder)
FORWARDER = web.AppKey("forwarder", Forwarder)
GUARD = web.AppKey("guard", BudgetGuard)
BACKFILL = web.AppKey("backfill", Backfill)
MANAGED_KEY = web.AppKey("managed_key", str)
RECONCILER = web.AppKey("reconciler", Reconciler)
PROVIDER_PRICES = web.AppKey("provider_prices", ProviderPrices)
INTAKE = web.AppKey("intake", Intake)
ATTRIBUTOR = web.AppKey("attributor", Attributor)
RUNTIME = web.AppKey("runtime", Runtime)
WORKER = web.AppKey("worker", WorkerSlot)


def create_app(config: Config, registry: CollectorRegistry | None = None, worker: WorkerSlot | None = None) -> web.Application:
    """`worker`: this process's place among `serve --workers N` (None for a single process)."""
    registry = registry if registry is not None else CollectorRegistry()
    check_environment(config)
    metrics_token = _metrics_token(config)
    managed_key = _managed_key(config)
    # The body limit is enforced by the forwarder with our own envelope; aiohttp's cap is a backstop.
    # auto_decompress off: a compressed request body is forwarded as the client compressed it,
    # with its Content-Encoding, instead of being inflated under a header that says gzip.
    app = web.Application(client_max_size=config.max_body_bytes, handler_args={"auto_decompress": False})
    app[CONFIG] = config
    if worker is not None:
        app[WORKER] = worker
    app[MANAGED_KEY] = managed_key or ""
    app[INTAKE] = Intake(config.max_body_bytes, config.max_buffered_bytes, config.body_idle_timeout_s, config.body_min_rate)
    app[METRICS] = Metrics(
        registry, session_cap=config.metrics.session_cap, project_cap=config.metrics.project_cap, tz=config.tz
    )
    app[METRICS].set_free_daily_limit(config.free_daily_limit)
    app.cleanup_ctx.extend(
        [_database, _window_spend, _recorder, _http_session, _catalog, _provider_prices, _budgets, _backfill, _forwarder, _runtime]
    )
    if config.reconcile.interval_minutes:
        app.cleanup_ctx.append(_reconcile(config, managed_key, config.reconcile.interval_minutes * 60))
    scrape = metrics_handler(registry, metrics_token)
    if worker is not None and config.metrics.enabled:
        # Each worker's own numbers on its socket; a scrape of any worker answers for all of them.
        app.cleanup_ctx.append(own_metrics_site(registry, worker, metrics_handler(registry, None)))
        scrape = summed_handler(registry, worker, lambda merged: metrics_handler(merged, metrics_token))
    if config.metrics.enabled and config.metrics.port is None:
        app.router.add_get("/metrics", _only_hosts(scrape, _own_hosts(config, config.host, metrics_token)))
    elif config.metrics.enabled:
        app.cleanup_ctx.append(_metrics_site(scrape, metrics_token, reuse_port=worker is not None))
    admin_token = _admin_token(config)
    if admin_token is not None:
        admin = Admin(
            admin_token, config.db_url or config.db, lambda: app[RUNTIME].refresh(),
            frozenset(k.alias for k in config.keys), frozenset(b.name for b in config.budgets), config.tz,
            config.db_password_env,
        )
        # The token guards it; the Host rule as for /metrics on loopback keeps DNS-rebinding pages off too.
        admin.add_routes(app.router, lambda handler: _only_hosts(handler, _own_hosts(config, config.host, None)))
    else:
        add_admin_off_routes(app.router)
    app.router.add_get("/healthz", _only_hosts(_health, _own_hosts(config, config.host, metrics_token)))
    if config.ui.enabled:
        # The page and its /-/ endpoints: before the catch-all, so they are never forwarded.
        add_web_routes(app, config, lambda: app[CATALOG], lambda: _live_budgets(app))
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


def check_environment(config: Config, environ: Mapping[str, str] | None = None) -> None:
    """What `serve` checks at start-up beyond the YAML (variables the config names must be set),
    so `check-config` fails on the same configs with the same one-line message."""
    environ = os.environ if environ is None else environ
    _metrics_token(config)
    _managed_key(config)
    from proxy.budgets.alerts import resolve_url

    for channel in config.alerts:
        if channel.url_env is not None:
            resolve_url(channel, environ)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _own_hosts(config: Config, bound: str, token: str | None) -> frozenset[str] | None:
    """The Host names the proxy's own pages answer to, or None for any.

    On loopback without a token, a page in a browser can still reach the proxy by DNS rebinding
    (its own name resolved to 127.0.0.1) and read spend, sessions and fingerprints; its requests
    carry its own name in Host, so only loopback names and `allowed_hosts` are answered. Off
    loopback /metrics needs a token anyway, and clients use whatever name reaches the machine.
    """
    if token is not None or not _is_loopback(bound):
        return None
    return frozenset({"localhost", bound.strip("[]").lower(), *config.allowed_hosts})


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else ""
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _only_hosts(handler: Handler, allowed: frozenset[str] | None) -> Handler:
    if allowed is None:
        return handler

    async def checked(request: web.Request) -> web.StreamResponse:
        name = _host_name(request.headers.get("Host", ""))
        if name not in allowed and not (name and _is_loopback(name)):
            log.warning("event=host_refused path=%s", request.path)
            return error_response(
                403,
                "openrouter-spend: this page answers only to localhost and loopback addresses "
                "(add the name to allowed_hosts, or set metrics.token_env)",
            )
        return await handler(request)

    return checked


def _managed_key(config: Config) -> str | None:
    if not config.managed_key_env:
        return None
    key = os.environ.get(config.managed_key_env, "").strip()
    if not key:
        raise ConfigError(f"managed_key_env: environment variable {config.managed_key_env} is not set")
    return key


def _live_budgets(app: web.Application) -> Budgets | None:
    # The guard runs even with no budget (one can be made at runtime); the page says "none" until then.
    budgets = app[GUARD].budgets if GUARD in app else None
    return budgets if budgets is not None and budgets.specs else None


def _admin_token(config: Config) -> str | None:
    if not config.admin.token_env:
        return None
    token = os.environ.get(config.admin.token_env, "").strip()
    if not token:
        raise ConfigError(f"admin.token_env: environment variable {config.admin.token_env} is not set")
    return token


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
    config = app[CONFIG]
    store = await open_store(config.db_url or config.db, config.db_password_env)
    app[STORE] = store
    if isinstance(store, SqliteStore):
        app[DB] = store.db
    try:
        yield
    finally:
        await store.close()


async def _window_spend(app: web.Application) -> AsyncIterator[None]:
    """Seeds spend today/this week/this month from the log, so a restart does not zero those gauges.

    A month of a busy log takes seconds to read, so it runs beside serving: only rows started before
    now are read, and requests from now on are counted as they end, so nothing counts twice."""
    worker = app.get(WORKER)
    if not app[CONFIG].metrics.enabled or (worker is not None and not worker.seed_window_spend):
        yield
        return
    task = asyncio.create_task(_seed_window_spend(app[STORE], app[METRICS], datetime.now(UTC)), name="window-spend-seed")
    yield
    task.cancel()
    await asyncio.wait([task])


async def _seed_window_spend(store: Store, metrics: Metrics, until: datetime) -> None:
    starts = metrics.window_spend.starts
    try:
        rows = await spend_by_window(store, starts, until)
    except store.write_errors as e:
        log.warning("event=window_spend_seed_failed error=%s", e)
        return
    metrics.load_window_spend(rows, starts)
    log.info("event=window_spend_seeded groups=%d", len(rows))


async def _recorder(app: web.Application) -> AsyncIterator[None]:
    metrics = app[METRICS]
    recorder = Recorder(
        app[STORE],
        on_dropped=metrics.recorder_dropped,
        on_write_error=metrics.recorder_write_error,
        on_rows=metrics.recorder_rows,
        raw_days=app[CONFIG].retention_raw_days,
    )
    metrics.set_recorder_depth_source(recorder.depth)
    app[RECORDER] = recorder
    task = asyncio.create_task(recorder.run(), name="recorder-writer")
    task.add_done_callback(_writer_ended)
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await recorder.drain()


def _writer_ended(task: asyncio.Task[None]) -> None:
    # The one writer dying would silently stop every row: say so at once, loudly.
    if not task.cancelled() and task.exception() is not None:
        log.critical("event=recorder_writer_died error=%r", task.exception(), exc_info=task.exception())


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # No total timeout: it would cut long reasoning streams. limit=0: a thousand concurrent
    # agent streams must not queue behind a connection pool.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s, sock_read=config.read_timeout_s)
    # Made here, not at aiohttp's import: SSL_CERT_FILE/SSL_CERT_DIR as set when serving starts count.
    context = await asyncio.to_thread(upstream_ssl_context, config)
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, ssl=context)
    proxy, proxy_auth = _env_proxy(config.upstream)
    session = aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        # trust_env=True would look up the proxy and ~/.netrc in a thread on every request (two
        # executor hops on the hot path; under load they starved the writer task): the upstream is
        # one URL, so its proxy is looked up once here instead.
        trust_env=False,
        proxy=proxy,
        proxy_auth=proxy_auth,
        # One session serves every client: a cookie the upstream sets (Cloudflare's __cf_bm) goes back
        # to the caller it answered, never into a jar that would send it with everyone's requests.
        # A jar also filtered cookies on every request and parsed Set-Cookie on every reply.
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    app[SESSION] = session
    try:
        yield
    finally:
        await session.close()


def upstream_ssl_context(config: Config) -> ssl.SSLContext:
    """The TLS trust for the upstream: the system's CA store (OpenSSL reads $SSL_CERT_FILE and
    $SSL_CERT_DIR instead when set), plus `upstream_ca_file`, e.g. the root of a corporate proxy
    that inspects TLS. Blocking file reads: call it from a thread once the loop runs."""
    context = ssl.create_default_context()
    if config.upstream_ca_file is not None:
        path = config.upstream_ca_file
        try:
            context.load_verify_locations(cafile=path)
        except ssl.SSLError as exc:  # before OSError: it is one
            raise ConfigError(f"upstream_ca_file: {path} holds no PEM CA certificate ({exc.reason or exc})") from None
        except OSError as exc:
            raise ConfigError(f"upstream_ca_file: cannot read {path}: {exc.strerror or exc}") from None
    context.set_alpn_protocols(("http/1.1",))  # as aiohttp's own default context
    return context


def _env_proxy(upstream: str) -> tuple[yarl.URL | None, aiohttp.BasicAuth | None]:
    """The proxy HTTPS_PROXY / HTTP_PROXY (minus NO_PROXY) name for the upstream, as curl and pip
    honour them behind a corporate proxy; (None, None) when there is none."""
    from aiohttp.helpers import get_env_proxy_for_url

    try:
        return get_env_proxy_for_url(yarl.URL(upstream))
    except LookupError:
        return None, None


async def _catalog(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    holder = initial_catalog(config.catalog_file)
    app[CATALOG] = holder
    metrics = app[METRICS]
    metrics.set_catalog(len(holder.current), holder.updated_at)
    refreshing = config.catalog_refresh_s > 0 and config.catalog_file is None
    has_history = bool(await app[STORE].fetch("SELECT 1 FROM model_prices LIMIT 1"))
    if not refreshing or has_history:
        # With a refresh coming, a first start leaves the built-in snapshot out of the price
        # history: its differences from the live listing are not price changes (`models --changes`).
        record_prices(holder.current, app[RECORDER], datetime.now(UTC))
    task = None
    if refreshing:
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


async def _provider_prices(app: web.Application) -> AsyncIterator[None]:
    # Per-provider prices come from the live upstream, so only when the catalog is refreshed from it.
    config = app[CONFIG]
    if config.catalog_refresh_s <= 0 or config.catalog_file is not None:
        yield
        return
    key = app[MANAGED_KEY]
    prices = ProviderPrices(
        app[SESSION],
        config.upstream,
        max_age_s=config.catalog_refresh_s,
        headers={"Authorization": f"Bearer {key}"} if key else None,
    )
    app[PROVIDER_PRICES] = prices
    yield
    await prices.close()


async def _budgets(app: web.Application) -> AsyncIterator[None]:
    # A guard even without config budgets: budgets can be added at runtime (budgets set, keys --budget).
    config = app[CONFIG]
    notifier = Notifier(config.alerts, app[SESSION])
    budgets = Budgets(config.budgets, config.tz)
    rows = await load_spend(app[STORE], budgets, datetime.now(UTC))
    guard = BudgetGuard(budgets, app[RECORDER], notifier, app[METRICS])
    shared_tasks: list[asyncio.Task[None]] = []
    store = app[STORE]
    holds: HoldStore | None = None
    sqlite_holds: SqliteHolds | None = None
    if store.engine == "postgresql":
        from proxy.store.holds import PostgresHolds
        from proxy.store.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        holds = PostgresHolds(store.pool, replica_id(), config.budget_lease_s)
    elif config.workers > 1:
        # Workers on one SQLite file share the ledger too; one worker keeps deciding in memory.
        worker = app.get(WORKER)
        queue = worker.sockets / "ledger.lock" if worker is not None else None
        sqlite_holds = holds = await SqliteHolds.open(config.db, replica_id(), config.budget_lease_s, queue)
    if holds is not None:
        # Replicas (or workers) on one database enforce one budget: admission goes through its ledger.
        ledger = SharedLedger(holds, lambda: guard.budgets, guard.notify, store.write_errors)
        try:
            await ledger.start(datetime.now(UTC))
        except BaseException:
            if sqlite_holds is not None:
                await sqlite_holds.close()  # its thread would hold the process open
            raise
        guard.shared = ledger
        shared_tasks = [
            asyncio.create_task(ledger.admissions(), name="budget-admissions"),
            asyncio.create_task(ledger.run(), name="budget-settles"),
            asyncio.create_task(ledger.heartbeat(), name="budget-lease"),
        ]
    guard.publish()
    app[GUARD] = guard
    log.info("event=budgets_loaded budgets=%d rows=%d shared=%s", len(config.budgets), rows, guard.shared is not None)
    delivery = asyncio.create_task(notifier.run(), name="alert-delivery")
    publisher = asyncio.create_task(publish_loop(guard), name="budget-gauges")
    yield
    publisher.cancel()
    await asyncio.wait([publisher])
    if guard.shared is not None:
        await guard.shared.drain()
        for task in shared_tasks:
            task.cancel()
        await asyncio.wait(shared_tasks)
        await guard.shared.leave()
    if sqlite_holds is not None:
        await sqlite_holds.close()
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
    attributor = Attributor(await app[STORE].salt(), config.keys, managed=bool(app[MANAGED_KEY]))
    app[ATTRIBUTOR] = attributor
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
        provider_prices=app.get(PROVIDER_PRICES),
        intake=app[INTAKE],
    )
    first_byte = asyncio.create_task(app[FORWARDER].first_byte.run(), name="first-byte-timeouts")
    yield
    first_byte.cancel()
    await asyncio.wait([first_byte])


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    # Keys and budgets made at runtime: loaded before the port opens, then polled.
    runtime = Runtime(app[CONFIG], app[STORE], app[ATTRIBUTOR], app[GUARD], app[RECORDER])
    app[RUNTIME] = runtime
    await runtime.refresh()
    task = asyncio.create_task(runtime.run(), name="runtime-keys")
    yield
    task.cancel()
    await asyncio.wait([task])


def _reconcile(config: Config, managed_key: str | None, interval_s: float):  # type: ignore[no-untyped-def]
    """Compares GET /key with the log every `reconcile.interval_minutes`; the key is read here, at
    create_app, so a missing variable is a one-line config error before the port opens."""
    key_env = config.reconcile.key_env or (config.managed_key_env if managed_key else "OPENROUTER_API_KEY")
    assert key_env is not None
    key = os.environ.get(key_env, "").strip()
    if not key:
        raise ConfigError(f"reconcile.key_env: environment variable {key_env} is not set")
    # In managed mode every forwarded request went out on the managed key, whatever proxy key
    # the client showed, so all rows count for it; otherwise only the rows of this key's fingerprint.
    every_row = managed_key is not None and key == managed_key

    def of_key(salt_: bytes) -> str:
        return fingerprint(key, salt_)

    async def reconcile(app: web.Application) -> AsyncIterator[None]:
        metrics = app[METRICS]
        reconciler = Reconciler(
            app[SESSION], config.upstream, key, key_env, config.db_url or config.db, None if every_row else of_key,
            metrics.set_reconcile, metrics.reconcile_failed, password_env=config.db_password_env,
        )
        app[RECONCILER] = reconciler
        task = asyncio.create_task(reconciler.run(interval_s), name="reconcile")
        yield
        task.cancel()
        await asyncio.wait([task])

    return reconcile


def _metrics_site(scrape: Handler, token: str | None, reuse_port: bool = False):  # type: ignore[no-untyped-def]
    async def serve_metrics(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        metrics_app = web.Application()
        host = config.metrics.host or config.host
        metrics_app.router.add_get("/metrics", _only_hosts(scrape, _own_hosts(config, host, token)))
        runner = web.AppRunner(metrics_app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.metrics.host or config.host, config.metrics.port, reuse_port=reuse_port or None)
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
            **({"worker": app[WORKER].index} if WORKER in app else {}),
        }
    )


async def _forward(request: web.Request) -> web.StreamResponse:
    try:
        return await request.app[FORWARDER].handle(request)
    finally:
        # The body the intake counted is held until the exchange is over (streamed replies included).
        request.app[INTAKE].release(request)
