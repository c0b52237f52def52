"""Where a request goes: our path forms to the upstream URL, the model it asks for, which headers cross.

The upstream URL is always the configured base plus the path after `/v1/`, so no path, Host
header or absolute request-target can make the proxy contact another host.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from proxy.server.attribution import clean
from proxy.usage import BILLED_ENDPOINTS

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


class BadRequest(ValueError):
    """A request the proxy refuses with 400 before anything is forwarded."""


class BadPath(BadRequest):
    pass


# Hop-by-hop removal of these would make the upstream see a different credential (or host) than
# the one attributed and checked, so a Connection header may not name them.
_NEVER_HOP = frozenset({"authorization", "x-api-key", "host"})


def check_connection(headers: Mapping[str, str]) -> None:
    named = _connection_listed(headers) & _NEVER_HOP
    if named:
        raise BadRequest(f"the Connection header may not name {', '.join(sorted(named))}")


_PROJECT_PREFIX = re.compile(r"^/p/([^/]{1,200})(/.*)$")
_API_PREFIX = re.compile(r"^(?:/api)?/v1/(.*)$", re.DOTALL)


# What a path segment may hold once percent-decoded: RFC 3986 pchars without `%` and `;`. Anything
# else (a space, `?`, `#`, `;`, `\\`, a control or non-ASCII character) is a 400: an upstream that
# trims, strips path parameters or decodes again could route it to a billed endpoint we did not see.
_SEGMENT = re.compile(r"[A-Za-z0-9._~:@!$&'()*+,=-]+")
# Endpoints whose spelling is fixed: any case of them is classified and forwarded as this one.
KNOWN_ENDPOINTS = BILLED_ENDPOINTS | frozenset(
    {"models", "generation", "key", "keys", "credits", "messages/count_tokens", "providers", "activity", "auth/keys"}
)


# Paths short enough to remember: the same few (`/api/v1/chat/completions`) come on every request.
_CACHED_TARGET = 512


def resolve(raw_path: str, query_string: str, upstream: str) -> Route | None:
    """None when the path is not one of ours (`/api/v1/...`, `/v1/...`, `/p/<project>/...`).

    The path after `/v1/` is decoded and canonicalised (empty segments dropped, a known endpoint
    in any case becomes its one spelling), and exactly that canonical path is what is classified
    and what is forwarded: never one string for the budget check and another for the upstream.
    A pure function of its arguments, so its answers are remembered (a refused path raises every time).
    """
    if len(raw_path) + len(query_string) <= _CACHED_TARGET:
        return _resolve_cached(raw_path, query_string, upstream)
    return _resolve(raw_path, query_string, upstream)


def _resolve(raw_path: str, query_string: str, upstream: str) -> Route | None:
    if "#" in raw_path or "#" in query_string:
        # An HTTP client drops the fragment, so the upstream would see a path we never classified.
        raise BadPath("a request target may not carry a fragment ('#')")
    project = None
    match = _PROJECT_PREFIX.match(raw_path)
    if match:
        project = clean(unquote(match.group(1)), 64)
        raw_path = match.group(2)
    api = _API_PREFIX.match(raw_path)
    if not api:
        return None
    try:
        decoded = unquote(api.group(1), errors="strict")
    except UnicodeDecodeError:
        raise BadPath("the path is not valid percent-encoded UTF-8") from None
    segments = [segment for segment in decoded.split("/") if segment]
    for segment in segments:
        if segment in (".", ".."):
            raise BadPath("path segments '.' and '..' are not allowed")
        if not _SEGMENT.fullmatch(segment):
            raise BadPath("the path holds a character the proxy does not forward (space, %, ;, ?, #, \\, control or non-ASCII)")
    endpoint = "/".join(segments)
    if endpoint.lower() in KNOWN_ENDPOINTS:
        endpoint = endpoint.lower()
    # Every character left is a valid pchar, so the canonical path is its own encoding.
    target = upstream + "/" + endpoint + ("?" + query_string if query_string else "")
    url = URL(target, encoded=True)
    base = URL(upstream)
    if url.host != base.host or url.port != base.port or url.scheme != base.scheme:
        raise BadPath("path would leave the upstream host")
    return Route(project=project, endpoint=endpoint, upstream_url=url)


_resolve_cached = functools.lru_cache(maxsize=1024)(_resolve)


def managed_allows(method: str, endpoint: str) -> bool:
    """What managed mode forwards with the proxy's own key: inference, counting and the catalog.

    Everything else (/key, /keys, /credits, /activity, ...) would hand any proxy-key holder the
    account behind the managed key; a /generation lookup is allowed only for the caller's own ids,
    which the forwarder checks.
    """
    if method == "POST":
        return endpoint in BILLED_ENDPOINTS or endpoint == "messages/count_tokens"
    if method in ("GET", "HEAD"):
        return endpoint == "models" or endpoint.startswith("models/") or endpoint == "generation"
    return False


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


_CONNECTION = istr("Connection")
_NOTHING: frozenset[str] = frozenset()


def _connection_listed(headers: Mapping[str, str]) -> frozenset[str]:
    # A client may send Connection more than once; every one of them lists hop-by-hop headers.
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        values = headers.getall(_CONNECTION, ())
    else:
        values = [headers.get("Connection") or ""]
    if not values:
        return _NOTHING  # HTTP/1.1 clients mostly send no Connection header at all
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
