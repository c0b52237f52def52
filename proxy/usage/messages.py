"""Usage of Anthropic-style /messages: `message_start` and `message_delta` usage, or the JSON body.

Anthropic's `input_tokens` excludes cache reads and writes; Usage's includes them, so they are
added up here, once, and pricing never has to know which API shape a request used.
"""

from __future__ import annotations

from typing import Any

from proxy.usage import Usage
from proxy.usage._stream import StreamParser
from proxy.usage._values import count, error_code, mapping, money, part_of

_INPUT_PARTS = ("anthropic_input", "cache_write_tokens", "cached_tokens")


class MessagesParser(StreamParser):
    WANTED_EVENTS = frozenset({b"message_start", b"message_delta", b"error"})

    def take(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = mapping(event.get("message"))
            self.meta(message)
            self._take_usage(mapping(message.get("usage")), final=False)
        elif kind == "message_delta":
            self._take_usage(mapping(event.get("usage")), final=True)
        elif kind == "error" or event.get("error"):
            self.fields["error"] = error_code(event.get("error"))
        else:
            self.meta(event)

    def take_body(self, body: dict[str, Any]) -> None:
        if body.get("type") == "error" or body.get("error"):
            self.fields["error"] = error_code(body.get("error"))
            return
        self.meta(body)
        self._take_usage(mapping(body.get("usage")), final=True)

    def _take_usage(self, usage: dict[str, Any], final: bool) -> None:
        # message_delta repeats the counts cumulatively: a later value replaces an earlier one.
        for field, key in (
            ("anthropic_input", "input_tokens"),
            ("output_tokens", "output_tokens"),
            ("cache_write_tokens", "cache_creation_input_tokens"),
            ("cached_tokens", "cache_read_input_tokens"),
        ):
            if key in usage:
                value = count(usage[key])
                self.fields[field] = value
                # null means "none used"; a present but nonsense part makes the sum unknown.
                self.fields["bad_" + field] = value is None and usage[key] is not None
        creation = usage.get("cache_creation")
        if isinstance(creation, dict) and "ephemeral_1h_input_tokens" in creation:
            self.fields["cache_write_1h_tokens"] = count(creation["ephemeral_1h_input_tokens"])
        if "cost" in usage:
            self.fields["cost_reported"] = money(usage["cost"])
        tools = mapping(usage.get("server_tool_use"))
        if "web_search_requests" in tools:
            self.fields["web_search_requests"] = count(tools["web_search_requests"])
        if final and usage:
            self.fields["complete"] = True

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
            web_search_requests=f.get("web_search_requests"),
            cost_reported=f.get("cost_reported"),
            complete=bool(f.get("complete")),
            error=f.get("error"),
        )
