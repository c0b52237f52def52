"""Usage of Anthropic-style /messages: `message_start` and `message_delta` usage, or the JSON body.

Anthropic's `input_tokens` excludes cache reads and writes; Usage's includes them, so they are
added up here, once, and pricing never has to know which API shape a request used.
"""

from __future__ import annotations

from typing import Any

from proxy.usage import Usage
from proxy.usage._stream import StreamParser
from proxy.usage._values import count, error_code, mapping, part_of

_INPUT_PARTS = ("anthropic_input", "cache_write_tokens", "cached_tokens")
_COUNTS = (
    ("anthropic_input", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cache_write_tokens", "cache_creation_input_tokens"),
    ("cached_tokens", "cache_read_input_tokens"),
)


def _iterations(raw: Any) -> dict[str, Any] | None:
    """The counts of `usage.iterations` summed, or None when there is no such list."""
    if not isinstance(raw, list) or not raw:
        return None
    totals: dict[str, Any] = {}
    for _, key in _COUNTS:
        values = [mapping(item).get(key) for item in raw]
        if all(value is None for value in values):
            continue  # no iteration says: the top level's count (or message_start's) stands
        counted = [count(value) for value in values if value is not None]
        # A nonsense count in any iteration makes the total unknown (passed on as a bad value).
        totals[key] = -1 if None in counted else sum(c for c in counted if c is not None)
    return totals


class MessagesParser(StreamParser):
    WANTED_EVENTS = frozenset({b"message_start", b"message_delta", b"error"})

    def take(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = mapping(event.get("message"))
            self.meta(message)
            self._take_usage(mapping(message.get("usage")), delta=False)
        elif kind == "message_delta":
            usage = mapping(event.get("usage"))
            self._take_usage(usage, delta=True)
            if usage:
                self.fields["complete"] = True
        elif kind == "error" or event.get("error"):
            self.fields["error"] = error_code(event.get("error"))
        else:
            self.meta(event)

    def take_body(self, body: dict[str, Any]) -> None:
        if body.get("type") == "error" or body.get("error"):
            self.fields["error"] = error_code(body.get("error"))
            return
        self.meta(body)
        usage = mapping(body.get("usage"))
        self._take_usage(usage, delta=False)
        if usage:
            self.fields["complete"] = True

    def _take_usage(self, usage: dict[str, Any], delta: bool) -> None:
        iterations = _iterations(usage.get("iterations"))
        if iterations is not None:
            # Server-side compaction (and the like) samples more than once per request: the top
            # level counts only the last iteration, but every iteration is billed.
            usage = {**usage, **iterations}
        # message_delta repeats the counts cumulatively: a later value replaces an earlier one,
        # but a null there means "no new value" and keeps what message_start said.
        for field, key in _COUNTS:
            if key not in usage or (delta and usage[key] is None):
                continue
            value = count(usage[key])
            self.fields[field] = value
            # Outside a delta null means "none used"; a present but nonsense part makes the sum unknown.
            self.fields["bad_" + field] = value is None and usage[key] is not None
        creation = usage.get("cache_creation")
        if isinstance(creation, dict) and creation.get("ephemeral_1h_input_tokens") is not None:
            self.fields["cache_write_1h_tokens"] = count(creation["ephemeral_1h_input_tokens"])
        for key in ("output_tokens_details", "completion_tokens_details"):
            details = mapping(usage.get(key))
            if details.get("reasoning_tokens") is not None:
                self.fields["reasoning_tokens"] = count(details["reasoning_tokens"])
        tier = usage.get("service_tier")
        if isinstance(tier, str) and tier:
            self.fields["service_tier"] = tier[:32]
        self.take_billing({k: v for k, v in usage.items() if v is not None} if delta else usage)
        self.take_web_search(usage)

    def usage(self) -> Usage:
        f = self.fields
        uncached = f.get("anthropic_input")
        cache_write = f.get("cache_write_tokens")
        cached = f.get("cached_tokens")
        input_tokens = None
        if uncached is not None and not any(f.get("bad_" + part) for part in _INPUT_PARTS):
            input_tokens = uncached + (cache_write or 0) + (cached or 0)
        return Usage(
            model=f.get("model"),
            provider=f.get("provider"),
            generation_id=f.get("generation_id"),
            input_tokens=input_tokens,
            output_tokens=f.get("output_tokens"),
            cached_tokens=cached,
            cache_write_tokens=cache_write,
            cache_write_1h_tokens=part_of(f.get("cache_write_1h_tokens"), cache_write),
            reasoning_tokens=part_of(f.get("reasoning_tokens"), f.get("output_tokens")),
            web_search_requests=f.get("web_search_requests"),
            cost_reported=f.get("cost_reported"),
            is_byok=f.get("is_byok"),
            upstream_cost=f.get("upstream_cost"),
            service_tier=f.get("service_tier"),
            complete=bool(f.get("complete")),
            error=f.get("error"),
        )
