"""The /-/admin/ API: keys and budgets at runtime for scripts, behind its own token.

Off unless `admin.token_env` is set (until then every /-/admin/ path answers 404). Every request needs
`Authorization: Bearer <token>`, compared in constant time; nothing is answered without it. The
writes are the CLI's (proxy/store/keys.py) on a short-lived connection in a thread, then the
running proxy reloads at once instead of at its next poll.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from proxy.errors import ConfigError, error_response
from proxy.store import keys as store

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/-/admin"


class Admin:
    def __init__(
        self,
        token: str,
        db_path: Path | str,
        refresh: Callable[[], Awaitable[Any]],
        config_aliases: frozenset[str],
        config_budgets: frozenset[str],
        tz: ZoneInfo,
        password_env: str | None = None,
    ) -> None:
        self._tz = tz
        self._password_env = password_env
        self._token = token.encode()
        self._db_path = db_path
        self._refresh = refresh
        self._aliases = config_aliases
        self._budgets = config_budgets

    def add_routes(self, router: web.UrlDispatcher, wrap: Callable[[Handler], Handler]) -> None:
        for method, path, handler in (
            ("POST", "/keys", self.create_key),
            ("GET", "/keys", self.list_keys),
            ("DELETE", "/keys/{name}", self.revoke_key),
            ("PUT", "/budgets/{name}", self.set_budget),
            ("DELETE", "/budgets/{name}", self.delete_budget),
        ):
            router.add_route(method, PREFIX + path, wrap(self._authorized(handler)))
        # Last under /-/admin/: a method or path the table lacks is answered here (behind the token),
        # not by the page's /-/{tail} route or the catch-all.
        router.add_route("*", PREFIX + "/{tail:.*}", wrap(self._authorized(_unknown)))

    def _authorized(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
                log.warning("event=admin_refused path=%s", request.path)
                return error_response(401, "openrouter-spend: the admin API needs its token (admin.token_env)",
                                      headers={"WWW-Authenticate": 'Bearer realm="openrouter-spend-admin"'})
            try:
                return await handler(request)
            except store.NameTaken as exc:
                return error_response(409, f"openrouter-spend: {exc}")
            except ConfigError as exc:
                return error_response(400, f"openrouter-spend: {exc}")

        return checked

    async def _in_thread(self, work: Callable[[Any], Any]) -> Any:
        def run() -> Any:
            db = store.connect(self._db_path, self._password_env)
            try:
                return work(db)
            finally:
                db.close()

        result = await asyncio.to_thread(run)
        await self._refresh()
        return result

    async def create_key(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        name = body.get("name")
        if not isinstance(name, str):
            return error_response(400, "openrouter-spend: name: required")
        expires = body.get("expires")
        now = datetime.now(UTC)
        expires_at = now + store.parse_duration(expires, "expires") if isinstance(expires, str) else None
        project, budget = _optional(body, "project"), _optional(body, "budget")
        key = await self._in_thread(
            lambda db: store.create_key(db, name, now, project=project, budget=budget, expires_at=expires_at, reserved_names=self._aliases)
        )
        log.info("event=key_created name=%s", name)
        return web.json_response(
            {"name": name, "key": key, "project": project, "budget": budget, "expires_at": expires_at.isoformat() if expires_at else None},
            status=201,
            headers={"Cache-Control": "no-store"},  # the key is in this body, and only here
        )

    async def list_keys(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self._in_thread(lambda db: store.describe_keys(db, self._tz, datetime.now(UTC))))

    async def revoke_key(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not await self._in_thread(lambda db: store.revoke_key(db, name, datetime.now(UTC))):
            return error_response(404, f"openrouter-spend: no live key named {name!r}")
        log.info("event=key_revoked name=%s", name)
        return web.json_response({"name": name, "revoked": True})

    async def set_budget(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        spec = store.budget_from_fields(name, await _json(request))
        await self._in_thread(lambda db: store.set_budget(db, spec, datetime.now(UTC), reserved_names=self._budgets))
        return web.json_response({"name": name, **store.spec_fields(spec)})

    async def delete_budget(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name in self._budgets:
            return error_response(409, f"openrouter-spend: {name!r} is a budget in the config; edit the config instead")
        if not await self._in_thread(lambda db: store.delete_budget(db, name)):
            return error_response(404, f"openrouter-spend: no runtime budget named {name!r}")
        return web.json_response({"name": name, "deleted": True})


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ConfigError("body: expected a JSON object") from None
    if not isinstance(body, dict):
        raise ConfigError("body: expected a JSON object")
    return body


def _optional(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string")
    return value


def add_off_routes(router: web.UrlDispatcher) -> None:
    """With the admin API off, /-/admin/ still belongs to it: 404 saying how to turn it on."""

    async def off(request: web.Request) -> web.StreamResponse:
        return error_response(404, "openrouter-spend: the admin API is off (set admin.token_env to turn it on)")

    router.add_route("*", PREFIX + "/{tail:.*}", off)


async def _unknown(request: web.Request) -> web.StreamResponse:
    tail = request.match_info["tail"].strip("/").split("/")
    allowed: str | None = None
    if tail == ["keys"]:
        allowed = "GET, POST"
    elif len(tail) == 2 and tail[1]:
        allowed = {"keys": "DELETE", "budgets": "PUT, DELETE"}.get(tail[0])
    if allowed is not None:
        return error_response(405, f"openrouter-spend: {request.path} answers {allowed}", headers={"Allow": allowed})
    return error_response(
        404,
        f"openrouter-spend: no admin endpoint {request.path} (known: GET/POST {PREFIX}/keys, DELETE {PREFIX}/keys/NAME, "
        f"PUT/DELETE {PREFIX}/budgets/NAME)",
    )
