"""Usage: one meaning of token counts and billed cost for every API shape, and the parser per path.

`input_tokens` counts every prompt token, cache reads and writes included; `cached_tokens` and
`cache_write_tokens` are parts of it. `output_tokens` includes `reasoning_tokens`. A count the
upstream did not report (or reported as nonsense) is None, never 0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Usage:
    model: str | None = None
    provider: str | None = None
    generation_id: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    # Of cache_write_tokens, those written for an hour (Anthropic's 1 h TTL, priced apart).
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    web_search_requests: int | None = None
    input_audio_tokens: int | None = None
    input_images: int | None = None
    output_image_tokens: int | None = None
    output_audio_tokens: int | None = None
    cost_reported: Decimal | None = None
    is_byok: bool | None = None
    # `cost_details.upstream_inference_cost`: what the provider charged. With BYOK that is the
    # user's own provider bill, and `cost_reported` is only OpenRouter's fee on top of it.
    upstream_cost: Decimal | None = None
    # The processing tier that served (and is billed): OpenAI's `flex`/`priority`, Anthropic's
    # `standard`/`priority`/`batch`, from the reply (top level, or inside /messages usage).
    service_tier: str | None = None
    # True once the usage block itself was seen (final SSE chunk, response.completed, ...).
    complete: bool = False
    # A mid-stream failure reported inside a 200 response: the upstream's code or type.
    error: str | None = None


class UsageParser(Protocol):
    """Fed the response bytes as they stream; finish() returns what was seen so far."""

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> Usage: ...

    # SSE data events seen: when a stream is cut before its usage, roughly the tokens it carried.
    @property
    def events(self) -> int: ...


# Endpoints (the path after /api/v1/) whose replies carry billed usage, and so get a row.
BILLED_ENDPOINTS = frozenset({"chat/completions", "completions", "embeddings", "messages", "responses"})


def parser_for(endpoint: str, streamed: bool, generation_id: str | None = None) -> UsageParser:
    if endpoint == "messages":
        return _shapes().messages(streamed, generation_id)
    if endpoint == "responses":
        return _shapes().responses(streamed, generation_id)
    return _shapes().chat(streamed, generation_id)


class _Shapes:
    def __init__(self) -> None:
        # Imported here: the shape modules import Usage from this package.
        from proxy.usage.chat import ChatParser
        from proxy.usage.messages import MessagesParser
        from proxy.usage.responses import ResponsesParser

        self.chat = ChatParser
        self.messages = MessagesParser
        self.responses = ResponsesParser


@functools.cache
def _shapes() -> _Shapes:
    # Once: three imports per request (a lookup in sys.modules each) cost about 1% of the proxy's CPU.
    return _Shapes()
