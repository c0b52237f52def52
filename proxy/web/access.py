"""Who may see the page: expected Host names only, a token (or proxy key) off loopback, strict headers.

`check()` is one small function applied to `/` and every `/-/` path; /metrics has its own Host
check, and the two can be unified. A browser cannot send a bearer header when opening a link, so
`/?token=...` trades a valid token for an HttpOnly, SameSite=Strict cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from proxy.config import Config
from proxy.errors import ConfigError, error_response

COOKIE = "openrouter_spend_ui"
# No inline script or style anywhere on the page, so nothing but our own files may run or style it.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "127.0.0.1", "::1"})


@dataclass(frozen=True, slots=True)
class Access:
    loopback: bool
    hosts: frozenset[str]
    # SHA-256 digests of every secret that opens the page: the UI or metrics token, proxy keys.
    secrets: frozenset[bytes]


def is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def policy(config: Config, environ: Mapping[str, str] | None = None) -> Access:
    env = os.environ if environ is None else environ
    secrets: set[bytes] = set()
    if config.ui.token_env:
        token = env.get(config.ui.token_env, "")
        if not token:
            raise ConfigError(f"ui.token_env: environment variable {config.ui.token_env} is not set")
        secrets.add(_digest(token))
    elif config.metrics.token_env and env.get(config.metrics.token_env):
        secrets.add(_digest(env[config.metrics.token_env]))
    if config.managed_key_env:
        for alias in config.keys:
            if alias.key_env and env.get(alias.key_env):
                secrets.add(_digest(env[alias.key_env]))
            elif alias.key_sha256:
                secrets.add(bytes.fromhex(alias.key_sha256))
    # `allowed_hosts` names the proxy's own pages answer (/metrics too); `ui.hosts` adds names for the page alone.
    hosts = {h.lower() for h in (*config.ui.hosts, *config.allowed_hosts)}
    hosts.add(config.host.lower())
    return Access(is_loopback(config.host), frozenset(hosts), frozenset(secrets))


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def host_allowed(host_header: str | None, access: Access) -> bool:
    """Loopback names, IP literals and configured names: a rebound attacker domain is none of them."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host in access.hosts or is_loopback(host):
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def presented(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE) or None


def secret_ok(secret: str | None, access: Access) -> bool:
    if not secret:
        return False
    given = _digest(secret)
    # compare_digest on every candidate: no early exit that times which one matched
    return any([hmac.compare_digest(given, known) for known in access.secrets])


def check(request: web.Request, access: Access) -> web.Response | None:
    """None when the request may be answered, else the error response to send."""
    if not host_allowed(request.host, access):
        return error_response(403, "openrouter-spend: unexpected Host header (add the name to allowed_hosts)")
    if access.loopback:
        return None
    if not access.secrets:
        return error_response(
            403, "openrouter-spend: the page is off on a non-loopback address until ui.token_env is set"
        )
    if secret_ok(presented(request), access):
        return None
    return error_response(
        401,
        "openrouter-spend: open /?token=<ui token> once, or send 'Authorization: Bearer <ui token>'",
        headers={"WWW-Authenticate": 'Bearer realm="openrouter-spend"'},
    )
