"""What a request body says that changes its price but never shows in the reply's usage: the web
plugin (`:online`), the cache TTL asked for, `speed: "fast"`. Read with byte searches, so the
multi-MB prompt of a coding agent is never JSON-parsed; a marker inside a prompt string cannot
match because quotes in JSON strings are escaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

# OpenRouter's web plugin (Exa) is billed $4 per 1,000 results, 5 results by default
# (openrouter.ai/docs/features/web-search); `catalog.web_search_result_usd` overrides it.
WEB_RESULT_USD = Decimal("0.004")
WEB_DEFAULT_RESULTS = 5

_WEB_PLUGIN = re.compile(rb'"id"\s*:\s*"web"')
_MAX_RESULTS = re.compile(rb'"max_results"\s*:\s*(\d{1,4})')
_NATIVE_ENGINE = re.compile(rb'"engine"\s*:\s*"native"')
_TTL = re.compile(rb'"ttl"\s*:\s*"([0-9a-z]{1,8})"')
_FAST = re.compile(rb'"speed"\s*:\s*"fast"')


@dataclass(frozen=True, slots=True)
class Hints:
    web_results: int = 0  # results the web plugin may bill (`:online` or plugins: [{"id": "web"}])
    cache_ttl_1h: bool = False  # every cache_control the body names asks for an hour
    fast: bool = False  # `speed: "fast"`: the model's -fast entry prices it


NONE = Hints()

# A body scan costs ~1 ms per MB per marker. When the reply carried its billed cost, the hints only
# sharpen the drift check, so bodies larger than this are not scanned then.
SCAN_WHEN_REPORTED = 256 * 1024


def hints_for(body: bytes, model_requested: str | None, cost_reported: bool) -> Hints:
    """read_hints, skipping the body scan of a large request whose cost OpenRouter reported."""
    if cost_reported and len(body) > SCAN_WHEN_REPORTED:
        return read_hints(b"", model_requested)
    return read_hints(body, model_requested)


def read_hints(body: bytes, model_requested: str | None) -> Hints:
    online = bool(model_requested) and ":online" in (model_requested or "")
    web = online or (b'"plugins"' in body and _WEB_PLUGIN.search(body) is not None)
    results = 0
    if web and _NATIVE_ENGINE.search(body) is None:  # a native search is billed by the provider
        found = _MAX_RESULTS.search(body)
        results = int(found.group(1)) if found else WEB_DEFAULT_RESULTS
    ttl_1h = False
    if b'"ttl"' in body:
        ttls = {m.group(1) for m in _TTL.finditer(body)}
        ttl_1h = ttls == {b"1h"}
    fast = b'"speed"' in body and _FAST.search(body) is not None
    if not (results or ttl_1h or fast):
        return NONE
    return Hints(web_results=results, cache_ttl_1h=ttl_1h, fast=fast)
