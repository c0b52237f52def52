"""`GET /`, `/-/static/*` and the `/-/` JSON endpoints, mounted on the proxy's own app by `add_routes`.

Reads never run on the event loop: each one opens a read-only connection (SQLite file or
PostgreSQL, proxy/store/reader.py) in a small pool of worker processes (see Reader), and answers are cached for a moment keyed by endpoint and query,
so many open pages cost one query per key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import json
import logging
import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.budgets.ledger import Budgets
from proxy.config import Config
from proxy.errors import CliError, error_response
from proxy.pricing.calculator import estimate_rows, estimate_usage, model_rows
from proxy.pricing.refresh import CatalogHolder
from proxy.store.reader import errors, open_reader
from proxy.web import access, reads
from proxy.web.query import FILTERS, BadQuery, Query, parse_query

log = logging.getLogger(__name__)

CACHE_TTL_S = 1.5
_RANGE = ("since", "until", "tz", *FILTERS)
STATIC = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
    "chart.umd.min.js": "text/javascript",
    "chart.js.LICENSE.md": "text/plain",
    "chart.js.VERSION": "text/plain",
}


class Reader:
    """Runs read functions on a fresh read-only connection in worker processes; caches answers briefly.

    Processes, not threads: a report over a big log is Python work, and in a thread it would hold
    the GIL against the event loop (measured: 3 open pages cut proxied throughput by half and
    tripled p50). The workers run at idle CPU priority, so on a busy core forwarding wins.
    They start on the first read, from a fork server (never forked from a process with threads);
    as with any multiprocessing, a script that embeds the app must guard its start with
    `if __name__ == "__main__":` (`python -m proxy` and the `openrouter-spend` script do).
    """

    def __init__(
        self, path: Path | str, ttl_s: float = CACHE_TTL_S, workers: int = 2, pool: Executor | None = None,
        password_env: str | None = None,
    ) -> None:
        self._path = path
        self._password_env = password_env
        self._ttl = ttl_s
        self._workers = workers
        self._pool = pool
        self._cache: dict[Any, tuple[float, asyncio.Future[Any]]] = {}

    def _executor(self) -> Executor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self._workers, mp_context=_context(), initializer=_background)
        return self._pool

    async def read(self, key: Any, fn: Callable[..., Any], *args: Any) -> Any:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and (now < hit[0] or not hit[1].done()):
            return await asyncio.shield(hit[1])
        if len(self._cache) > 256:
            self._cache = {k: v for k, v in self._cache.items() if now < v[0]}
        loop = asyncio.get_running_loop()
        pool = self._executor()
        try:
            future = loop.run_in_executor(pool, call, self._path, fn, args, self._password_env)
        except BrokenProcessPool:
            self._discard(pool)
            raise
        self._cache[key] = (now + self._ttl, future)
        try:
            return await asyncio.shield(future)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): start a new pool on the next read instead of
            # failing every read until the proxy restarts.
            self._cache.pop(key, None)
            self._discard(pool)
            raise
        except BaseException:
            self._cache.pop(key, None)
            raise

    def _discard(self, pool: Executor) -> None:
        if self._pool is pool:
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _context() -> multiprocessing.context.BaseContext:
    # forkserver: one clean server process (started once, with the read modules imported) forks
    # each worker, so a new pool costs milliseconds, and nothing forks a process with threads.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["proxy.web.routes"])
        return context
    return multiprocessing.get_context("spawn")


def _background() -> None:
    # Ctrl-C reaches the whole process group: the proxy shuts the pool down, workers must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SCHED_IDLE: a worker runs only when a core would otherwise idle, so page reads never take CPU
    # from forwarding, even on a core they share; nice 19 where the policy does not exist.
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass


class ReadFailed(Exception):
    """A read's database error, as one line of text: a driver's own exception may not survive the
    trip back from the worker process (pickling)."""


def call(path: Path | str, fn: Callable[..., Any], args: tuple[Any, ...], password_env: str | None = None) -> Any:
    """In a worker: one read on its own read-only connection.

    Without the cyclic collector: a read builds tens of thousands of small objects (a line per
    session) and makes no cycles, and the collector's full passes over them were a third of
    /-/report?by=session's CPU (as for `report`, proxy/cli/report.py). Anything cyclic a read
    leaves is collected once it is back on."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _read(path, fn, args, password_env)
    finally:
        if collecting:
            gc.enable()


def _read(path: Path | str, fn: Callable[..., Any], args: tuple[Any, ...], password_env: str | None) -> Any:
    try:
        db = open_reader(path, password_env)
    except FileNotFoundError:
        raise
    except errors() as exc:
        raise ReadFailed(f"{type(exc).__name__}: {exc}") from None
    try:
        reads.prepare_connection(db)
        return fn(db, *args)
    except (sqlite3.Error, OSError):
        raise
    except errors(db) as exc:
        raise ReadFailed(f"{type(exc).__name__}: {exc}") from None
    finally:
        db.close()


CONFIG = web.AppKey("web_config", Config)
ACCESS = web.AppKey("web_access", access.Access)
READER = web.AppKey("web_reader", Reader)


@dataclasses.dataclass(frozen=True, slots=True)
class Sources:
    """What the page reads from the running proxy rather than the log; looked up per request,
    because the catalog holder and the budget ledger exist only once their cleanup contexts run."""

    catalog: Callable[[], CatalogHolder]
    budgets: Callable[[], Budgets | None]


SOURCES = web.AppKey("web_sources", Sources)


def add_routes(
    app: web.Application,
    config: Config,
    catalog: Callable[[], CatalogHolder],
    budgets: Callable[[], Budgets | None],
) -> None:
    """Mount before the proxy's catch-all: `/` and everything under `/-/` never reach the forwarder."""
    app[CONFIG] = config
    app[ACCESS] = access.policy(config)
    app[SOURCES] = Sources(catalog, budgets)
    app.cleanup_ctx.append(_reader)
    app.router.add_route("*", "/", _page)
    app.router.add_route("*", "/-/{tail:.*}", _dispatch)


async def _reader(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    reader = Reader(config.db_url or config.db, password_env=config.db_password_env)
    app[READER] = reader
    yield
    await asyncio.get_running_loop().run_in_executor(None, reader.close)


def _secured(response: web.StreamResponse) -> web.StreamResponse:
    for name, value in access.HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@functools.cache
def _static(name: str) -> bytes:
    # Read once: the files ship in the package and never change while it runs (no disk I/O on the loop).
    return resources.files("proxy.web").joinpath("static", name).read_bytes()


async def _page(request: web.Request) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        return _secured(error_response(405, "openrouter-spend: the page answers GET only", headers={"Allow": "GET, HEAD"}))
    policy = request.app[ACCESS]
    token = request.query.get("token")
    if token is not None and access.host_allowed(request.host, policy) and access.secret_ok(token, policy):
        # Trade the link's token for a cookie and drop it from the address bar (and history).
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(access.COOKIE, token, httponly=True, samesite="Strict", path="/",
                            secure=request.secure, max_age=30 * 86400)
        return _secured(response)
    denied = access.check(request, policy)
    if denied is not None:
        return _secured(denied)
    return _secured(web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8"))


Handler = Callable[[web.Request, Query], Awaitable[Any]]


async def _dispatch(request: web.Request) -> web.StreamResponse:
    denied = access.check(request, request.app[ACCESS])
    if denied is not None:
        return _secured(denied)
    if request.method not in ("GET", "HEAD"):
        return _secured(error_response(405, "openrouter-spend: /-/ answers GET only", headers={"Allow": "GET, HEAD"}))
    tail = request.match_info["tail"]
    if tail.startswith("static/"):
        name = tail.removeprefix("static/")
        if name not in STATIC:
            return _secured(error_response(404, f"openrouter-spend: no static file {name!r}"))
        headers = {"Cache-Control": "no-cache"}
        return _secured(web.Response(body=_static(name), content_type=STATIC[name], headers=headers))
    endpoint = ENDPOINTS.get(tail)
    if endpoint is None:
        known = ", ".join(f"/-/{name}" for name in ENDPOINTS)
        return _secured(error_response(404, f"openrouter-spend: no endpoint /-/{tail} (known: {known})"))
    allowed, handler = endpoint
    config = request.app[CONFIG]
    now = datetime.now(UTC)
    try:
        # /-/report answers as `report` does, whose --tz defaults to UTC; the rest follow the config.
        default_tz = "UTC" if tail == "report" else config.timezone
        query = parse_query(request.query.items(), allowed, now, default_tz=default_tz)
        body = await handler(request, query)
    except (BadQuery, CliError) as exc:
        return _secured(error_response(400, f"openrouter-spend: {exc}"))
    except (sqlite3.Error, FileNotFoundError, BrokenProcessPool, ReadFailed) as exc:
        log.warning("event=web_read_failed path=%s error=%r", request.path, str(exc))
        return _secured(error_response(503, f"openrouter-spend: cannot read the request log: {exc}"))
    except Exception:
        log.exception("event=web_endpoint_failed path=%s", request.path)
        return _secured(error_response(500, "openrouter-spend: internal error (see the proxy's log)"))
    text = body if isinstance(body, reads.JsonText) else json.dumps(body, default=_json_default)
    return _secured(web.Response(text=text, content_type="application/json"))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _key(request: web.Request) -> tuple[str, tuple[tuple[str, str], ...]]:
    return request.path, tuple(sorted(request.query.items()))


async def _report(request: web.Request, query: Query) -> Any:
    config = request.app[CONFIG]
    return await request.app[READER].read(
        _key(request), reads.report, query, config.free_daily_limit, datetime.now(UTC)
    )


def _grouped(query: Query, default: str) -> Query:
    if query.first("by") is None:
        return dataclasses.replace(query, by=default)
    if query.by not in reads.GROUPS:
        raise BadQuery(f"by: expected one of {', '.join(reads.GROUPS)}, got {query.by!r}")
    return query


async def _timeseries(request: web.Request, query: Query) -> Any:
    query = _grouped(query, "model")
    return await request.app[READER].read(_key(request), reads.timeseries, query, datetime.now(UTC))


async def _recent(request: web.Request, query: Query) -> Any:
    return {"requests": await request.app[READER].read(_key(request), reads.recent, query)}


async def _groups(request: web.Request, query: Query) -> Any:
    query = _grouped(query, "session")
    return {"by": query.by, "rows": await request.app[READER].read(_key(request), reads.groups, query)}


async def _free(request: web.Request, query: Query) -> Any:
    limit = request.app[CONFIG].free_daily_limit
    return await request.app[READER].read(_key(request), reads.free, limit, datetime.now(UTC))


async def _cache(request: web.Request, query: Query) -> Any:
    catalog = request.app[SOURCES].catalog().current
    return await request.app[READER].read(_key(request), reads.cache_and_drift, query, catalog)


async def _changes(request: web.Request, query: Query) -> Any:
    return {"changes": await request.app[READER].read(_key(request), reads.changes, query.first("search"))}


async def _whatif(request: web.Request, query: Query) -> Any:
    targets = query.all("target")
    if not targets:
        raise BadQuery("target: give at least one model id to re-price your traffic on")
    catalog = request.app[SOURCES].catalog().current
    rows = await request.app[READER].read(_key(request), reads.whatif, query, catalog, targets)
    return {"rows": rows}


async def _budgets(request: web.Request, query: Query) -> Any:
    ledger = request.app[SOURCES].budgets()
    if ledger is None:
        return {"configured": False, "budgets": []}
    statuses = ledger.snapshot(datetime.now(UTC))
    return {"configured": True, "budgets": [s.as_dict() for s in statuses]}


async def _models(request: web.Request, query: Query) -> Any:
    catalog = request.app[SOURCES].catalog().current
    count = _counts(query)
    if count is None:
        rows = model_rows(catalog, search=query.first("search"), free=query.first("free") in ("1", "true"))
        return {"models": reads._json_rows(rows[: query.limit])}
    usage = estimate_usage(*count)
    cheapest = _int(query, "cheapest")
    calls = _int(query, "calls")
    per = query.first("per") or "month"
    if per not in ("month", "day"):
        raise BadQuery(f"per: expected month or day, got {per!r}")
    rows = estimate_rows(
        catalog, usage, at=datetime.now(UTC), models=query.all("target"),
        cheapest=cheapest, vs=query.first("vs"), calls=calls, per=per,
    )
    return {"estimate": reads._json_rows(rows)}


def _counts(query: Query) -> tuple[int, int, int, int] | None:
    if query.first("input") is None and query.first("output") is None:
        return None
    numbers = [_int(query, name) or 0 for name in ("input", "output", "cached_input", "reasoning")]
    if numbers[2] > numbers[0]:
        raise BadQuery("cached_input: cannot be more than input")
    return numbers[0], numbers[1], numbers[2], numbers[3]


def _int(query: Query, name: str) -> int | None:
    text = query.first(name)
    if text is None or text == "":
        return None
    try:
        value = int(Decimal(text.replace(",", "").replace("_", "")))
    except (InvalidOperation, ValueError):
        raise BadQuery(f"{name}: expected a whole number, got {text!r}") from None
    if value < 0 or value > 10**12:
        raise BadQuery(f"{name}: expected a whole number from 0 to 10^12, got {text!r}")
    return value


ENDPOINTS: dict[str, tuple[tuple[str, ...], Handler]] = {
    "report": ((*_RANGE, "by", "limit"), _report),
    "timeseries": ((*_RANGE, "by", "step"), _timeseries),
    "recent": ((*_RANGE, "limit"), _recent),
    "sessions": ((*_RANGE, "by", "limit"), _groups),
    "budgets": ((), _budgets),
    "free-usage": ((), _free),
    "cache": (_RANGE, _cache),
    "price-changes": (("search",), _changes),
    "whatif": ((*_RANGE, "target"), _whatif),
    "models": (("search", "free", "limit", "input", "output", "cached_input", "reasoning", "cheapest", "target", "vs", "calls", "per"), _models),
}
