"""Usage of /chat/completions, /completions and /embeddings: `usage` in the JSON body or the last SSE chunk.

OpenAI's shape: `prompt_tokens` already includes `cached_tokens` and `cache_write_tokens`, and
`completion_tokens` already includes `reasoning_tokens`, which is exactly Usage's meaning.
"""

from __future__ import annotations

from typing import Any

from proxy.usage._stream import StreamParser
from proxy.usage._values import count, error_code, mapping, money


class ChatParser(StreamParser):
    def wants(self, payload: bytes) -> bool:
        # `"error"` also matches `"finish_reason":"error"`.
        return b'"usage"' in payload or b'"error"' in payload

    def take(self, event: dict[str, Any]) -> None:
        self.meta(event)
        if event.get("error"):
            self.fields["error"] = error_code(event["error"])
        choices = event.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict) and choice.get("finish_reason") == "error":
                    self.fields.setdefault("error", error_code(choice.get("error")))
        usage = event.get("usage")
        if isinstance(usage, dict):
            self._take_usage(usage)

    def take_body(self, body: dict[str, Any]) -> None:
        self.take(body)

    def _take_usage(self, usage: dict[str, Any]) -> None:
        prompt = mapping(usage.get("prompt_tokens_details"))
        completion = mapping(usage.get("completion_tokens_details"))
        self.fields.update(
            complete=True,
            input_tokens=count(usage.get("prompt_tokens")),
            output_tokens=count(usage.get("completion_tokens")),
            cached_tokens=count(prompt.get("cached_tokens")),
            cache_write_tokens=count(prompt.get("cache_write_tokens")),
            input_audio_tokens=count(prompt.get("audio_tokens")),
            reasoning_tokens=count(completion.get("reasoning_tokens")),
            output_image_tokens=count(completion.get("image_tokens")),
            output_audio_tokens=count(completion.get("audio_tokens")),
            cost_reported=money(usage.get("cost")),
        )
        self.take_billing(usage)
        self.take_web_search(usage)
