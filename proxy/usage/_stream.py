"""The shared shell of every usage parser: a JSON body collected whole, or SSE payloads picked cheaply.

Content chunks are never JSON-parsed: a payload is decoded only when its event type (read from its
first bytes) or a marker such as `"usage"` says it can carry usage, metadata or an error.
A marker inside generated text cannot match, because quotes in JSON strings are escaped.
"""

from __future__ import annotations

import json
import re
from typing import Any

from proxy.usage.sse import SseSplitter
from proxy.usage import Usage
from proxy.usage._values import count, mapping, money, part_of, text

# A non-streamed body bigger than this is not parsed whole: its head and tail are kept instead,
# because usage comes last (a huge embeddings reply carries it after megabytes of vectors).
MAX_BODY_BYTES = 64 * 1024 * 1024
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 1024 * 1024
_USAGE_KEY = re.compile(rb'"usage"\s*:\s*\{')
_META = {name: re.compile(rb'"' + name.encode() + rb'"\s*:\s*"([^"\\]{1,200})"') for name in ("id", "model", "provider")}

_EVENT_TYPE = re.compile(rb'\s*\{\s*"type"\s*:\s*"([A-Za-z0-9_.]{1,64})"')


def event_type(payload: bytes) -> bytes | None:
    match = _EVENT_TYPE.match(payload, 0, 128)
    return match.group(1) if match else None


def parse_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def ends_of_body(head: bytes, tail: bytes) -> dict[str, Any]:
    """What a reply too big to parse says at its ends: the last `usage` object, id, model, provider.

    `"usage"` cannot occur inside a JSON string (its quotes would be escaped), so the last match in
    the tail is a key; its object is decoded from there. Metadata comes from the head first.
    """
    found: dict[str, Any] = {}
    starts = [m.end() - 1 for m in _USAGE_KEY.finditer(tail)]
    if starts:
        text = tail[starts[-1] :].decode("utf-8", "replace")
        try:
            found["usage"], _ = json.JSONDecoder().raw_decode(text)
        except (ValueError, RecursionError):
            pass
    for name, pattern in _META.items():
        match = pattern.search(head) or pattern.search(tail)
        if match:
            found[name] = match.group(1).decode("utf-8", "replace")
    return found


class StreamParser:
    """Subclasses say which payloads to decode (`wants`) and what to take from them (`take`)."""

    def __init__(self, streamed: bool, generation_id: str | None = None) -> None:
        self.streamed = streamed
        self.fields: dict[str, Any] = {}
        if generation_id:
            self.fields["generation_id"] = generation_id
        self._splitter = SseSplitter() if streamed else None
        self._body: list[bytes] = []
        self._body_size = 0
        self._head = b""
        self._tail = bytearray()
        self._payloads = 0

    def feed(self, chunk: bytes) -> None:
        if self._splitter is None:
            self._body_size += len(chunk)
            if self._body_size <= MAX_BODY_BYTES:
                self._body.append(chunk)
                return
            if self._body:
                whole = b"".join(self._body)
                self._head, self._tail, self._body = whole[:HEAD_BYTES], bytearray(whole[-TAIL_BYTES:]), []
            self._tail += chunk
            if len(self._tail) > 2 * TAIL_BYTES:
                del self._tail[:-TAIL_BYTES]
            return
        for payload in self._splitter.feed(chunk):
            self._payload(payload)

    def finish(self) -> Usage:
        if self._splitter is None:
            if self._body_size > MAX_BODY_BYTES:
                self.take_body(ends_of_body(self._head, bytes(self._tail[-TAIL_BYTES:])))
            elif self._body:
                body = parse_json(b"".join(self._body))
                if isinstance(body, dict):
                    self.take_body(body)
            self._body, self._head, self._tail = [], b"", bytearray()
        else:
            for payload in self._splitter.finish():
                self._payload(payload)
        return self.usage()

    @property
    def events(self) -> int:
        return self._payloads

    def _payload(self, payload: bytes) -> None:
        first = self._payloads == 0
        self._payloads += 1
        if first or self.wants(payload):
            obj = parse_json(payload)
            if isinstance(obj, dict):
                self.take(obj)

    def meta(self, obj: dict[str, Any]) -> None:
        generation_id = text(obj.get("id"))
        if generation_id and generation_id.startswith("gen-"):
            self.fields["generation_id"] = generation_id
        for field in ("model", "provider", "service_tier"):
            value = text(obj.get(field), 32 if field == "service_tier" else 200)
            if value:
                self.fields[field] = value

    # Event types worth decoding, for shapes whose events start with `{"type": ...}`.
    WANTED_EVENTS: frozenset[bytes] = frozenset()

    def wants(self, payload: bytes) -> bool:
        kind = event_type(payload)
        if kind is None:
            return b'"usage"' in payload or b'"error"' in payload
        return kind in self.WANTED_EVENTS

    def usage(self) -> Usage:
        """OpenAI's counting (chat, responses) is already Usage's: parts are checked against wholes."""
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
            web_search_requests=f.get("web_search_requests"),
            input_audio_tokens=part_of(f.get("input_audio_tokens"), input_tokens),
            output_image_tokens=part_of(f.get("output_image_tokens"), output_tokens),
            output_audio_tokens=part_of(f.get("output_audio_tokens"), output_tokens),
            cost_reported=f.get("cost_reported"),
            is_byok=f.get("is_byok"),
            upstream_cost=f.get("upstream_cost"),
            service_tier=f.get("service_tier"),
            complete=bool(f.get("complete")),
            error=f.get("error"),
        )

    def take_billing(self, usage: dict[str, Any]) -> None:
        """OpenRouter's own fields, the same in every shape: `cost`, `is_byok`, `cost_details`."""
        if "cost" in usage:
            self.fields["cost_reported"] = money(usage["cost"])
        byok = usage.get("is_byok")
        if isinstance(byok, bool):
            self.fields["is_byok"] = byok
        details = mapping(usage.get("cost_details"))
        if "upstream_inference_cost" in details:
            self.fields["upstream_cost"] = money(details["upstream_inference_cost"])

    def take_web_search(self, usage: dict[str, Any]) -> None:
        # OpenRouter documents `server_tool_use_details`; Anthropic's own shape says `server_tool_use`.
        for key in ("server_tool_use_details", "server_tool_use"):
            tools = mapping(usage.get(key))
            if "web_search_requests" in tools:
                self.fields["web_search_requests"] = count(tools["web_search_requests"])
                return

    # To be provided by each API shape.

    def take(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def take_body(self, body: dict[str, Any]) -> None:
        raise NotImplementedError

