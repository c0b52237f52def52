"""Where a request goes: our path forms to the upstream URL, the model it asks for, which headers cross.

The upstream URL is always the configured base plus the path after `/v1/`, so no path, Host
header or absolute request-target can make the proxy contact another host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.server.attribution import clean

# RFC 9110 §7.6.1 hop-by-hop headers, plus those the HTTP client or server sets itself.
_REQUEST_DROP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        # We ask the upstream for identity so usage can be read without decoding every
        # encoding a client may accept (Codex asks for zstd); the client gets plain bytes.
        "Accept-Encoding",
    )
)
# Our own headers (X-Spend-Project, X-Spend-Session, any later one) are not OpenRouter's business.
_OWN_PREFIX = "x-spend-"
_RESPONSE_DROP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        # aiohttp has already decoded the body; forwarding this would make the client decode twice.
        "Content-Encoding",
    )
)


@dataclass(frozen=True, slots=True)
class Route:
    project: str | None
    endpoint: str  # the path after /v1/, e.g. "chat/completions"
    upstream_url: URL


class BadPath(ValueError):
    pass


_PROJECT_PREFIX = re.compile(r"^/p/([^/]{1,200})(/.*)$")
_API_PREFIX = re.compile(r"^(?:/api)?/v1/(.*)$", re.DOTALL)


def resolve(raw_path: str, query_string: str, upstream: str) -> Route | None:
    """None when the path is not one of ours (`/api/v1/...`, `/v1/...`, `/p/<project>/...`)."""
    project = None
    match = _PROJECT_PREFIX.match(raw_path)
    if match:
        project = clean(unquote(match.group(1)), 64)
        raw_path = match.group(2)
    api = _API_PREFIX.match(raw_path)
    if not api:
        return None
    rest = api.group(1)
    decoded = unquote(rest)
    if any(segment in ("..", ".") for segment in decoded.replace("\\", "/").split("/")):
        raise BadPath("path segments '.' and '..' are not allowed")
    target = upstream + "/" + rest + ("?" + query_string if query_string else "")
    url = URL(target, encoded=True)
    base = URL(upstream)
    if url.host != base.host or url.port != base.port or url.scheme != base.scheme:
        raise BadPath("path would leave the upstream host")
    # Cleaned once here: the endpoint reaches logs, SQLite and labels, and `%0A` decodes to a newline.
    endpoint = clean(decoded.split("?", 1)[0].strip("/"), 200) or ""
    return Route(project=project, endpoint=endpoint, upstream_url=url)


def upstream_headers(headers: Mapping[str, str], managed_key: str | None = None) -> CIMultiDict[str]:
    """What crosses to the upstream; with a managed key, the client's own credentials never do."""
    out: CIMultiDict[str] = CIMultiDict()
    connection_listed = _connection_listed(headers)
    for name, value in headers.items():
        lower = name.lower()
        if lower in _REQUEST_DROP or lower in connection_listed or lower.startswith(_OWN_PREFIX):
            continue
        if managed_key is not None and lower in ("authorization", "x-api-key"):
            continue
        out.add(name, value)
    out["Accept-Encoding"] = "identity"
    if managed_key is not None:
        out["Authorization"] = f"Bearer {managed_key}"
    return out


def client_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    connection_listed = _connection_listed(headers)
    for name, value in headers.items():
        lower = name.lower()
        if lower in _RESPONSE_DROP or lower in connection_listed:
            continue
        out.add(name, value)
    return out


def _connection_listed(headers: Mapping[str, str]) -> frozenset[str]:
    # A client may send Connection more than once; every one of them lists hop-by-hop headers.
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        values = headers.getall("Connection", [])
    else:
        values = [headers.get("Connection") or ""]
    return frozenset(token.strip().lower() for value in values for token in value.split(",") if token.strip())


_MODEL_VALUE = re.compile(rb'\s*:\s*"([^"\\]{1,200})"')


def requested_model(body: bytes) -> str | None:
    """The `"model": "..."` of a JSON body, found without parsing a multi-MB prompt.

    Quotes inside JSON strings are escaped, so `"model"` followed by `:` is a real key. SDKs put
    it before or after the messages; a nested `"model"` key (rare) is at worst a wrong guess
    used only for budget matching, never for pricing.
    """
    position = body.find(b'"model"')
    tries = 0
    while position >= 0 and tries < 8:
        match = _MODEL_VALUE.match(body, position + 7)
        if match:
            return clean(match.group(1).decode("utf-8", "replace"), 200)
        position = body.find(b'"model"', position + 7)
        tries += 1
    return None
