"""Usage of /responses: the `response.completed` event (or the JSON body), failures from `response.failed`.

The Responses API counts like chat: `input_tokens` includes `cached_tokens`, `output_tokens`
includes `reasoning_tokens`.
"""

from __future__ import annotations

from typing import Any

from proxy.usage import Usage
from proxy.usage._stream import StreamParser, event_type
from proxy.usage._values import count, error_code, mapping, money, part_of

_WANTED = {
    b"response.created",
    b"response.completed",
    b"response.incomplete",
    b"response.failed",
    b"error",
}


class ResponsesParser(StreamParser):
    def wants(self, payload: bytes) -> bool:
        kind = event_type(payload)
        if kind is None:
            return b'"usage"' in payload or b'"error"' in payload
        return kind in _WANTED

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
            byok = usage.get("is_byok")
            if isinstance(byok, bool):
                self.fields["is_byok"] = byok

    def usage(self) -> Usage:
        f = self.fields
        input_tokens = f.get("input_tokens")
        output_tokens = f.get("output_tokens")
        return Usage(
            model=f.get("model"),
            provider=f.get("provider"),
            generation_id=f.get("generation_id"),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=part_of(f.get("cached_tokens"), input_tokens),
            cache_write_tokens=part_of(f.get("cache_write_tokens"), input_tokens),
            reasoning_tokens=part_of(f.get("reasoning_tokens"), output_tokens),
            cost_reported=f.get("cost_reported"),
            is_byok=f.get("is_byok"),
            complete=bool(f.get("complete")),
            error=f.get("error"),
        )
