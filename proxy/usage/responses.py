"""Usage of /responses: the `response.completed` event (or the JSON body), failures from `response.failed`.

The Responses API counts like chat: `input_tokens` includes `cached_tokens`, `output_tokens`
includes `reasoning_tokens`.
"""

from __future__ import annotations

from typing import Any

from proxy.usage._stream import StreamParser
from proxy.usage._values import count, error_code, mapping, money


class ResponsesParser(StreamParser):
    WANTED_EVENTS = frozenset(
        {b"response.created", b"response.completed", b"response.incomplete", b"response.failed", b"error"}
    )

    def take(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "error":
            self.fields["error"] = error_code(event.get("error") or event)
            return
        response = event.get("response")
        if isinstance(response, dict):
            self.take_body(response)
            if kind == "response.failed" and "error" not in self.fields:
                self.fields["error"] = "response.failed"

    def take_body(self, body: dict[str, Any]) -> None:
        self.meta(body)
        if body.get("error"):
            self.fields["error"] = error_code(body["error"])
        usage = body.get("usage")
        if isinstance(usage, dict):
            inputs = mapping(usage.get("input_tokens_details"))
            outputs = mapping(usage.get("output_tokens_details"))
            self.fields.update(
                complete=True,
                input_tokens=count(usage.get("input_tokens")),
                output_tokens=count(usage.get("output_tokens")),
                cached_tokens=count(inputs.get("cached_tokens")),
                cache_write_tokens=count(inputs.get("cache_write_tokens")),
                reasoning_tokens=count(outputs.get("reasoning_tokens")),
                cost_reported=money(usage.get("cost")),
            )
            self.take_billing(usage)
            self.take_web_search(usage)
        searches = _web_search_calls(body.get("output"))
        if searches:
            # Each web_search_call output item is one search the provider ran and billed.
            self.fields["web_search_requests"] = max(searches, self.fields.get("web_search_requests") or 0)


def _web_search_calls(output: Any) -> int:
    if not isinstance(output, list):
        return 0
    return sum(1 for item in output if isinstance(item, dict) and item.get("type") == "web_search_call")
