"""A fake OpenRouter: a real aiohttp app on loopback speaking chat, messages, responses, models, generation.

Each request may carry `X-Fake` with comma-separated behaviours, so one server serves every test:
  error500 | error502 | error503 | error429   the upstream fails with that status (with a Retry-After)
  stall                            no reply at all until the test gives up
  drop                             the stream is cut after a few chunks (connection reset)
  midstream-error                  an error event inside a 200 stream
  no-usage                         no usage block at all (embeddings too); no-cost: usage without `cost`
  garbage                          a stream of junk lines, or a JSON reply cut in half
  gzip                             the JSON reply is gzip-encoded (Content-Encoding: gzip)
  no-generation                    GET /generation never knows this request (404)
  late-generation                  GET /generation answers 404 twice before it knows the request
  short-body                       (/messages) a JSON reply cut after 10 bytes of its Content-Length
  absurd-usage                     usage with negative, null, huge and non-numeric counts and cost
  byok                             a bring-your-own-key reply: `cost` is OpenRouter's 5% fee and
                                   cost_details.upstream_inference_cost the provider's charge
  web-search                       the provider ran WEB_SEARCHES searches (each shape's own report)
  flex                             (chat) served on OpenAI's flex tier: `service_tier: "flex"` at the top level
  null-delta                       (/messages) message_delta repeats no input or cache count: nulls,
                                   as Anthropic's schema allows (Claude Code's streams)
  set-cookie                       (chat, not streamed) the reply sets a cookie, as Cloudflare in
                                   front of OpenRouter does (`__cf_bm`)
GET /models/{author}/{slug}/endpoints lists two providers for a model of the /models listing:
FakeProvider (the one every reply names) at ENDPOINT_MARKUP[model] (default 1) times its listed
price, and OtherProvider at the listed price; `endpoints-down` in FAULTS makes it fail with a 500.
ENDPOINT_FETCHES lists the models asked for.
GET /key answers for keys in KEYS (401 otherwise, like OpenRouter for an unknown or revoked key)
with the spend LEDGER holds for that key per UTC day, week (from Monday) and month; GET /activity
answers management keys in MANAGEMENT_KEYS with the ledger per completed UTC day x model x provider
(today too when ACTIVITY_TODAY is set, so a test need not wait for midnight). Every request a model
endpoint answers is billed to the ledger under the key it presented, like OpenRouter's books.
And `X-Fake-Chunks` / `X-Fake-Delay-Ms` shape a stream, `X-Fake-Gap-Ms` pauses once after the
second event, `X-Fake-Serve` names the model that serves, `X-Fake-Embedding-Bytes` makes an /embeddings reply that big (usage last), and `X-Fake-Pad` pads each content delta to that many bytes. Flags in the app's
FAULTS set apply to every request, the proxy's own /models refresh included (`garbage` makes
/models return truncated JSON). BILLED logs every call the fake would bill. A body that is not JSON gets OpenRouter's 400. DISCONNECTS lists
the generation ids of streams whose reader (the proxy) went away. Usage numbers are fixed per
request and the reported cost follows FAKE_PRICES, which are the real catalog figures of those models.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import posixpath
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

FIXTURES = Path(__file__).parent / "fixtures"

# USD per token (prompt, completion, cache read), as in the real 2026 listing.
FAKE_PRICES = {
    "openai/gpt-4o": (Decimal("0.0000025"), Decimal("0.00001"), Decimal("0.00000125")),
    "meta-llama/llama-3.1-8b-instruct": (Decimal("0.00000005"), Decimal("0.00000008"), Decimal("0.000000025")),
    "anthropic/claude-sonnet-4.5": (Decimal("0.000003"), Decimal("0.000015"), Decimal("0.0000003")),
}
PROMPT_TOKENS = 1200
# /generation's normalized prompt count differs from the native one billing uses.
NORMALIZED_PROMPT_TOKENS = 1163
CACHED_TOKENS = 200
COMPLETION_TOKENS = 300
REASONING_TOKENS = 50
WEB_SEARCHES = 2
BYOK_FEE_SHARE = Decimal("0.05")

RECEIVED: web.AppKey[list[dict[str, Any]]] = web.AppKey("received", list)
GENERATIONS: web.AppKey[dict[str, dict[str, Any]]] = web.AppKey("generations", dict)
FAULTS: web.AppKey[set[str]] = web.AppKey("faults", set)
# The fake's own log of calls it would bill (path, model, credential), kept apart from RECEIVED so
# a test can compare what the upstream charged with the rows the proxy wrote.
BILLED: web.AppKey[list[dict[str, Any]]] = web.AppKey("billed", list)
DISCONNECTS: web.AppKey[list[str]] = web.AppKey("disconnects", list)
ENDPOINT_FETCHES: web.AppKey[list[str]] = web.AppKey("endpoint_fetches", list)
# model id -> how many times the listed price FakeProvider charges.
ENDPOINT_MARKUP: web.AppKey[dict[str, int]] = web.AppKey("endpoint_markup", dict)
# model id -> pricing keys to change in the /models listing: a test's way to make prices move.
PRICE_CHANGES: web.AppKey[dict[str, dict[str, str]]] = web.AppKey("price_changes", dict)
# OpenRouter's books: (key, UTC day, model) -> cost, byok cost and requests billed.
LEDGER: web.AppKey[dict[tuple[str, date, str], dict[str, Any]]] = web.AppKey("ledger", dict)
KEYS: web.AppKey[set[str]] = web.AppKey("keys", set)
MANAGEMENT_KEYS: web.AppKey[set[str]] = web.AppKey("management_keys", set)
ACTIVITY_TODAY: web.AppKey[list[bool]] = web.AppKey("activity_today", list)


def fake_cost(model: str, prompt: int = PROMPT_TOKENS, cached: int = CACHED_TOKENS, completion: int = COMPLETION_TOKENS) -> Decimal:
    p, c, r = FAKE_PRICES.get(model, FAKE_PRICES["openai/gpt-4o"])
    return (prompt - cached) * p + cached * r + completion * c


def _flags(request: web.Request) -> set[str]:
    flags = {f.strip() for f in request.headers.get("X-Fake", "").split(",") if f.strip()}
    faults: set[str] = request.app[FAULTS]
    return flags | faults


def _not_json(raw: bytes) -> web.Response | None:
    if not raw:
        return None
    try:
        json.loads(raw)
    except ValueError:
        return web.json_response({"error": {"code": 400, "message": "fake upstream: body is not valid JSON"}}, status=400)
    return None


async def _body(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    """The body as received (recorded byte for byte), and as JSON after undoing a gzip encoding the
    way OpenRouter would; a body that is not valid (gzip'd) JSON comes back as raw bytes to refuse."""
    raw = await request.read()
    request.app[RECEIVED].append({"path": request.path_qs, "headers": dict(request.headers), "body": raw, "method": request.method})
    plain = raw
    if request.headers.get("Content-Encoding", "").lower() == "gzip":
        try:
            plain = gzip.decompress(raw)
        except (OSError, EOFError):
            plain = b"\x00not gzip"
    try:
        data = json.loads(plain) if plain else {}
    except ValueError:
        data = None
    return plain, data if isinstance(data, dict) else {}


async def _failure(request: web.Request, flags: set[str]) -> web.Response | None:
    for status in (500, 502, 503, 429):
        if f"error{status}" in flags:
            return web.json_response(
                {"error": {"code": status, "message": f"fake upstream says {status}", "metadata": {}}},
                status=status,
                headers={"Retry-After": "7"},
            )
    if "stall" in flags:
        await asyncio.sleep(3600)
    return None


def _reported_cost(request: web.Request, model: str) -> float:
    """The cost the fake bills: its price table, or `X-Fake-Cost` when a test wants round numbers."""
    override = request.headers.get("X-Fake-Cost")
    return float(override) if override else float(fake_cost(model))


def _chat_usage(model: str, flags: set[str], cost: float) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS, "cache_write_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
        "is_byok": False,
    }
    if "no-cost" not in flags:
        usage["cost"] = cost
    _billing(usage, flags, cost)
    if "web-search" in flags:
        usage["server_tool_use_details"] = {"web_search_requests": WEB_SEARCHES}
    if "absurd-usage" in flags:
        usage.update(prompt_tokens=10**15, completion_tokens=-5, total_tokens=None, cost=1e12)
        usage["prompt_tokens_details"] = {"cached_tokens": None, "cache_write_tokens": "lots"}
        usage["completion_tokens_details"] = {"reasoning_tokens": float("nan")}
    return usage


def _billing(usage: dict[str, Any], flags: set[str], cost: float) -> None:
    """OpenRouter's BYOK fields: with `byok`, `cost` becomes the fee and the provider's charge moves
    to cost_details; otherwise upstream_inference_cost is shown too but is already inside `cost`."""
    byok = "byok" in flags
    usage["is_byok"] = byok
    if "cost" in usage:
        usage["cost"] = float(Decimal(str(cost)) * BYOK_FEE_SHARE) if byok else cost
    usage["cost_details"] = {"upstream_inference_cost": cost if byok else round(cost * 0.95, 9)}


def _remember(request: web.Request, gen_id: str, model: str) -> None:
    flags = _flags(request)
    if "no-generation" in flags:  # /generation never learns of it: the 404 path
        return
    cost = _reported_cost(request, model)
    byok = "byok" in flags
    request.app[GENERATIONS][gen_id] = {
        "id": gen_id,
        "model": model,
        "total_cost": float(Decimal(str(cost)) * BYOK_FEE_SHARE) if byok else cost,
        "upstream_inference_cost": cost if byok else round(cost * 0.95, 9),
        "is_byok": byok,
        "tokens_prompt": NORMALIZED_PROMPT_TOKENS,
        "tokens_completion": COMPLETION_TOKENS,
        "native_tokens_prompt": PROMPT_TOKENS,
        "native_tokens_completion": COMPLETION_TOKENS,
        "native_tokens_cached": CACHED_TOKENS,
        "native_tokens_reasoning": REASONING_TOKENS,
        "num_search_results": 5 * WEB_SEARCHES if "web-search" in flags else 0,
        "provider_name": "FakeProvider",
        "lag": 2 if "late-generation" in flags else 0,
    }


def _bill(request: web.Request, model: str) -> None:
    """Add the request to OpenRouter's books, summed per key, UTC day and model (so a benchmark's
    million requests cost a few entries, not a million)."""
    key = _bearer(request) or request.headers.get("x-api-key", "")
    entry = request.app[LEDGER].setdefault((key, datetime.now(UTC).date(), model), {"cost": Decimal(0), "byok": Decimal(0), "requests": 0})
    cost = Decimal(str(_reported_cost(request, model)))
    if "byok" in _flags(request):  # OpenRouter's credits see its fee; the provider billed the user's key
        entry["cost"] += cost * BYOK_FEE_SHARE
        entry["byok"] += cost
    else:
        entry["cost"] += cost
    entry["requests"] += 1


def _bearer(request: web.Request) -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def _unauthorized() -> web.Response:
    return web.json_response({"error": {"code": 401, "message": "User not found."}}, status=401)


def _total(entries: list[dict[str, Any]], field: str) -> float:
    return float(sum((e[field] for e in entries), Decimal(0)))


async def key_info(request: web.Request) -> web.Response:
    """GET /key: the presented key's spend per UTC window, from the ledger."""
    await _body(request)
    key = _bearer(request)
    if key not in request.app[KEYS] and key not in request.app[MANAGEMENT_KEYS]:
        return _unauthorized()
    today = datetime.now(UTC).date()
    starts = {"daily": today, "weekly": today - timedelta(days=today.weekday()), "monthly": today.replace(day=1)}
    data: dict[str, Any] = {"label": key[:8] + "...", "limit": None, "is_free_tier": False,
                            "is_management_key": key in request.app[MANAGEMENT_KEYS]}
    entries = [e for (k, _, _), e in request.app[LEDGER].items() if k == key]
    data["usage"], data["byok_usage"] = _total(entries, "cost"), _total(entries, "byok")
    for name, start in starts.items():
        since = [e for (k, day, _), e in request.app[LEDGER].items() if k == key and day >= start]
        data[f"usage_{name}"], data[f"byok_usage_{name}"] = _total(since, "cost"), _total(since, "byok")
    return web.json_response({"data": data})


async def activity(request: web.Request) -> web.Response:
    """GET /activity (management key): the account's completed UTC days x model x provider."""
    await _body(request)
    key = _bearer(request)
    if key not in request.app[MANAGEMENT_KEYS]:
        if key in request.app[KEYS]:
            return web.json_response({"error": {"code": 403, "message": "Only management keys can fetch activity"}}, status=403)
        return _unauthorized()
    today = datetime.now(UTC).date()
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for (_, day, model), e in request.app[LEDGER].items():
        if day >= today and not request.app[ACTIVITY_TODAY] or day < today - timedelta(days=30):
            continue
        cell = cells.setdefault((day.isoformat(), model), {
            "date": day.isoformat(), "model": model, "model_permaslug": model + "-20260101",
            "endpoint_id": str(uuid.uuid5(uuid.NAMESPACE_URL, model)), "provider_name": "FakeProvider",
            "usage": Decimal(0), "byok_usage_inference": Decimal(0), "requests": 0,
            "prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0})
        cell["usage"] += e["cost"]
        cell["byok_usage_inference"] += e["byok"]
        cell["requests"] += e["requests"]
        cell["prompt_tokens"] += PROMPT_TOKENS * e["requests"]
        cell["completion_tokens"] += COMPLETION_TOKENS * e["requests"]
        cell["reasoning_tokens"] += REASONING_TOKENS * e["requests"]
    items = [{**c, "usage": float(c["usage"]), "byok_usage_inference": float(c["byok_usage_inference"])} for c in cells.values()]
    return web.json_response({"data": sorted(items, key=lambda c: (c["date"], c["model"]))})


async def _sse(request: web.Request, events: list[bytes], flags: set[str], gen_id: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Generation-Id": gen_id})
    await response.prepare(request)
    delay = float(request.headers.get("X-Fake-Delay-Ms", "0")) / 1000
    gap = float(request.headers.get("X-Fake-Gap-Ms", "0")) / 1000
    try:
        await response.write(b": OPENROUTER PROCESSING\n\n")
        for index, event in enumerate(events):
            if "drop" in flags and index == 3:
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(event)
            if delay:
                await asyncio.sleep(delay)
            if gap and index == 1:
                await asyncio.sleep(gap)
        await response.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        request.app[DISCONNECTS].append(gen_id)
        raise
    return response


def _data(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _begin(request: web.Request, default_model: str) -> web.StreamResponse | tuple[set[str], dict[str, Any], str, str]:
    """What every model endpoint does first: read the body, fail on request, mint a generation."""
    flags = _flags(request)
    raw, data = await _body(request)
    if (failed := _not_json(raw) or await _failure(request, flags)) is not None:
        return failed
    # `X-Fake-Serve`: the model that answers is not the one asked for (openrouter/auto, fallbacks).
    model = request.headers.get("X-Fake-Serve") or str(data.get("model") or default_model)
    gen_id = f"gen-{uuid.uuid4().hex[:20]}"
    _remember(request, gen_id, model)
    _bill(request, model)
    _log_billed(request, model)
    return flags, data, model, gen_id


def _log_billed(request: web.Request, model: str) -> None:
    credential = request.headers.get("Authorization", "").removeprefix("Bearer ") or request.headers.get("x-api-key")
    request.app[BILLED].append({"path": request.path, "model": model, "key": credential})


async def chat(request: web.Request) -> web.StreamResponse:
    begun = await _begin(request, "openai/gpt-4o")
    if isinstance(begun, web.StreamResponse):
        return begun
    flags, data, model, gen_id = begun
    chunks = int(request.headers.get("X-Fake-Chunks", "5"))
    base = {"id": gen_id, "provider": "FakeProvider", "model": model, "object": "chat.completion.chunk", "created": 1}
    if "flex" in flags:
        base["service_tier"] = "flex"
    if not data.get("stream"):
        body = {
            **base,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello " * chunks}, "finish_reason": "stop"}],
        }
        if "no-usage" not in flags:
            body["usage"] = _chat_usage(model, flags, _reported_cost(request, model))
        payload = json.dumps(body).encode()
        if "garbage" in flags:
            payload = payload[: len(payload) // 2]
        if "gzip" in flags:
            return web.Response(body=gzip.compress(payload), headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        reply = web.Response(body=payload, content_type="application/json")
        if "set-cookie" in flags:
            reply.set_cookie("__cf_bm", "for-the-caller-only", path="/", httponly=True)
        return reply
    if "garbage" in flags:
        events = [b"data: {not json\n\n", b"\x00\xff\xfe junk\n", b"data: {\"usage\": {\"prompt_tokens\": -5, \"cost\": \"abc\"}}\n\n", b"data: [DONE]\n\n"]
        return await _sse(request, events, flags, gen_id)
    events = [_data({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})]
    pad = int(request.headers.get("X-Fake-Pad", "0"))
    events += [_data({**base, "choices": [{"index": 0, "delta": {"content": f"word{i} ".ljust(pad, "x")}, "finish_reason": None}]}) for i in range(chunks)]
    if "midstream-error" in flags:
        events.append(_data({**base, "error": {"code": 502, "message": "provider went away"}, "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}))
        events.append(b"data: [DONE]\n\n")
        return await _sse(request, events, flags, gen_id)
    events.append(_data({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if "no-usage" not in flags:
        events.append(_data({**base, "choices": [], "usage": _chat_usage(model, flags, _reported_cost(request, model))}))
    events.append(b"data: [DONE]\n\n")
    return await _sse(request, events, flags, gen_id)


def _anthropic_usage(flags: set[str], model: str) -> dict[str, Any]:
    # Anthropic counts cache reads apart from input_tokens.
    usage: dict[str, Any] = {
        "input_tokens": PROMPT_TOKENS - CACHED_TOKENS,
        "cache_read_input_tokens": CACHED_TOKENS,
        "cache_creation_input_tokens": 0,
        "output_tokens": COMPLETION_TOKENS,
    }
    if "no-cost" not in flags:
        usage["cost"] = float(fake_cost(model))
    _billing(usage, flags, float(fake_cost(model)))
    if "web-search" in flags:
        usage["server_tool_use"] = {"web_search_requests": WEB_SEARCHES}
    return usage


async def _short_body(request: web.Request, payload: bytes) -> web.StreamResponse:
    """Promise the whole body in Content-Length, send ten bytes of it, then drop the connection."""
    response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": str(len(payload))})
    await response.prepare(request)
    await response.write(payload[:10])
    assert request.transport is not None
    request.transport.abort()
    return response


async def messages(request: web.Request) -> web.StreamResponse:
    begun = await _begin(request, "anthropic/claude-sonnet-4.5")
    if isinstance(begun, web.StreamResponse):
        return begun
    flags, data, model, gen_id = begun
    message: dict[str, Any] = {"id": gen_id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None, "stop_sequence": None}
    if not data.get("stream"):
        body = {**message, "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn", "usage": _anthropic_usage(flags, model)}
        if "short-body" in flags:
            return await _short_body(request, json.dumps(body).encode())
        return web.json_response(body)
    start_usage = {**_anthropic_usage(flags, model), "output_tokens": 1}
    for billed_later in ("cost", "cost_details", "is_byok", "server_tool_use"):
        start_usage.pop(billed_later, None)
    events = [
        _data({"type": "message_start", "message": {**message, "usage": start_usage}}, "message_start"),
        _data({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, "content_block_start"),
        _data({"type": "ping"}, "ping"),
    ]
    events += [_data({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"w{i} "}}, "content_block_delta") for i in range(int(request.headers.get("X-Fake-Chunks", "5")))]
    if "midstream-error" in flags:
        events.append(_data({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error"))
        return await _sse(request, events, flags, gen_id)
    events.append(_data({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    delta_usage = _anthropic_usage(flags, model)
    if "null-delta" in flags:
        delta_usage.update(input_tokens=None, cache_read_input_tokens=None, cache_creation_input_tokens=None)
    events.append(_data({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": delta_usage}, "message_delta"))
    events.append(_data({"type": "message_stop"}, "message_stop"))
    return await _sse(request, events, flags, gen_id)


def _responses_usage(flags: set[str], model: str) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": PROMPT_TOKENS,
        "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
        "output_tokens": COMPLETION_TOKENS,
        "output_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }
    if "no-cost" not in flags:
        usage["cost"] = float(fake_cost(model))
    _billing(usage, flags, float(fake_cost(model)))
    return usage


async def responses(request: web.Request) -> web.StreamResponse:
    begun = await _begin(request, "openai/gpt-4o")
    if isinstance(begun, web.StreamResponse):
        return begun
    flags, data, model, gen_id = begun
    text = "hello there"
    output = [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}]
    if "web-search" in flags:
        searches = [{"type": "web_search_call", "id": f"ws_{i}", "status": "completed", "action": {"type": "search", "query": "q"}} for i in range(WEB_SEARCHES)]
        output = searches + output
    response = {"id": gen_id, "object": "response", "created_at": 1, "model": model, "status": "in_progress", "output": [], "error": None, "incomplete_details": None, "usage": None}
    done = {**response, "status": "completed", "output": output, "usage": _responses_usage(flags, model)}
    if not data.get("stream"):
        return web.json_response(done)
    seq = iter(range(1000))
    events = [
        _data({"type": "response.created", "sequence_number": next(seq), "response": response}, "response.created"),
        _data({"type": "response.in_progress", "sequence_number": next(seq), "response": response}, "response.in_progress"),
        _data({"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 0, "item": {**output[-1], "status": "in_progress", "content": []}}, "response.output_item.added"),
        _data({"type": "response.content_part.added", "sequence_number": next(seq), "item_id": "msg_1", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}, "response.content_part.added"),
    ]
    for piece in ("hello", " there"):
        events.append(_data({"type": "response.output_text.delta", "sequence_number": next(seq), "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": piece}, "response.output_text.delta"))
    if "midstream-error" in flags:
        failed_response = {**response, "status": "failed", "error": {"code": "server_error", "message": "boom"}}
        events.append(_data({"type": "response.failed", "sequence_number": next(seq), "response": failed_response}, "response.failed"))
        return await _sse(request, events, flags, gen_id)
    events += [
        _data({"type": "response.output_text.done", "sequence_number": next(seq), "item_id": "msg_1", "output_index": 0, "content_index": 0, "text": text}, "response.output_text.done"),
        _data({"type": "response.content_part.done", "sequence_number": next(seq), "item_id": "msg_1", "output_index": 0, "content_index": 0, "part": output[-1]["content"][0]}, "response.content_part.done"),
        _data({"type": "response.output_item.done", "sequence_number": next(seq), "output_index": 0, "item": output[-1]}, "response.output_item.done"),
    ]
    if "no-usage" not in flags:
        events.append(_data({"type": "response.completed", "sequence_number": next(seq), "response": done}, "response.completed"))
    return await _sse(request, events, flags, gen_id)


async def embeddings(request: web.Request) -> web.Response:
    raw, data = await _body(request)
    if (failed := _not_json(raw)) is not None:
        return failed
    model = str(data.get("model") or "openai/text-embedding-3-small")
    _log_billed(request, model)
    usage: dict[str, Any] | None = {"prompt_tokens": 8, "total_tokens": 8, "cost": float(request.headers.get("X-Fake-Cost", "0.00000016"))}
    if "no-usage" in _flags(request):
        usage = None
    size = int(request.headers.get("X-Fake-Embedding-Bytes", "0"))
    if size:
        # A huge reply built as bytes (json.dumps of millions of floats is slow); usage comes last, as upstream.
        head = b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":['
        tail = b'0.1]}],"model":' + json.dumps(model).encode() + b',"usage":' + json.dumps(usage).encode() + b"}"
        filler = b"0.123456," * max(0, (size - len(head) - len(tail)) // 9)
        return web.Response(body=head + filler + tail, content_type="application/json")
    return web.json_response(
        {"object": "list", "model": model, "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}], "usage": usage}
    )


async def models(request: web.Request) -> web.Response:
    await _body(request)
    flags = _flags(request)
    if "error500" in flags:
        return web.json_response({"error": {"code": 500, "message": "down"}}, status=500)
    if "garbage" in flags:
        return web.Response(body=b'{"data": [{"id": "truncated', content_type="application/json")
    return web.Response(body=_listing(request.app), content_type="application/json")


def _listing(app: web.Application) -> bytes:
    listing = (FIXTURES / "models-2026.json").read_bytes()
    changes = app[PRICE_CHANGES]
    if changes:
        data = json.loads(listing)
        for model in data["data"]:
            model["pricing"].update(changes.get(model["id"], {}))
        listing = json.dumps(data).encode()
    return listing


async def endpoints(request: web.Request) -> web.Response:
    await _body(request)
    model = f"{request.match_info['author']}/{request.match_info['slug']}"
    request.app[ENDPOINT_FETCHES].append(model)
    if "endpoints-down" in request.app[FAULTS]:
        return web.json_response({"error": {"code": 500, "message": "down"}}, status=500)
    listed = next((m for m in json.loads(_listing(request.app))["data"] if m["id"] == model), None)
    if listed is None:
        return web.json_response({"error": {"code": 404, "message": "Model not found"}}, status=404)
    markup = request.app[ENDPOINT_MARKUP].get(model, 1)

    def endpoint(provider: str, times: int) -> dict[str, Any]:
        pricing = {k: str(Decimal(v) * times) for k, v in listed["pricing"].items() if isinstance(v, str)}
        return {"name": f"{provider} | {model}", "provider_name": provider, "tag": provider.lower(), "context_length": 128000,
                "pricing": pricing, "quantization": None, "max_completion_tokens": 16384, "status": 0}

    return web.json_response({"data": {"id": model, "name": model, "endpoints": [
        endpoint("FakeProvider", markup), endpoint("OtherProvider", 1)]}})


async def generation(request: web.Request) -> web.Response:
    await _body(request)
    # Like OpenRouter: only the key that made the request may read it.
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return web.json_response({"error": {"code": 401, "message": "No auth credentials found"}}, status=401)
    found = request.app[GENERATIONS].get(request.query.get("id", ""))
    if found is None or found.get("lag", 0) > 0:
        if found is not None:
            found["lag"] -= 1  # `late-generation`: not known for the first few lookups
        return web.json_response({"error": {"code": 404, "message": "Generation not found"}}, status=404)
    return web.json_response({"data": {k: v for k, v in found.items() if k != "lag"}})


async def echo(request: web.Request) -> web.Response:
    raw, _ = await _body(request)
    return web.json_response({"path": request.path_qs, "method": request.method, "length": len(raw)})


_BILLED_ROUTES: dict[str, Any] = {
    "/api/v1/chat/completions": chat,
    "/api/v1/completions": chat,
    "/api/v1/messages": messages,
    "/api/v1/responses": responses,
    "/api/v1/embeddings": embeddings,
}


@web.middleware
async def _lenient(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bill like the most forgiving upstream imaginable: any method with a body, any case, `//`,
    trailing `/`, dot segments, percent-encoding (even twice) and `;params` (or an encoded `?`/`#`) reach the billed handler. A proxy that lets
    such a path through unclassified then shows up in BILLED without a row."""
    if request.method not in ("GET", "HEAD") or request.body_exists:
        path = re.split(r"[;?#]", unquote(unquote(request.raw_path.split("?", 1)[0])))[0].strip().lower()
        handler = _BILLED_ROUTES.get(posixpath.normpath("/" + path.lstrip("/")), handler)
    return await handler(request)


def fake_app() -> web.Application:
    # auto_decompress off, so RECEIVED holds the bytes as they crossed the wire.
    app = web.Application(
        client_max_size=256 * 1024 * 1024, handler_args={"auto_decompress": False}, middlewares=[_lenient]
    )
    app[RECEIVED] = []
    app[GENERATIONS] = {}
    app[FAULTS] = set()
    app[BILLED] = []
    app[DISCONNECTS] = []
    app[PRICE_CHANGES] = {}
    app[LEDGER] = {}
    app[KEYS] = set()
    app[MANAGEMENT_KEYS] = set()
    app[ACTIVITY_TODAY] = []
    app[ENDPOINT_FETCHES] = []
    app[ENDPOINT_MARKUP] = {}
    app.router.add_post("/api/v1/chat/completions", chat)
    app.router.add_post("/api/v1/completions", chat)
    app.router.add_post("/api/v1/messages", messages)
    app.router.add_post("/api/v1/responses", responses)
    app.router.add_post("/api/v1/embeddings", embeddings)
    app.router.add_get("/api/v1/models", models)
    app.router.add_get("/api/v1/models/{author}/{slug}/endpoints", endpoints)
    app.router.add_get("/api/v1/generation", generation)
    app.router.add_get("/api/v1/key", key_info)
    app.router.add_get("/api/v1/activity", activity)
    app.router.add_route("*", "/api/v1/{tail:.*}", echo)
    return app


if __name__ == "__main__":  # a standalone fake for benchmarks and manual runs
    import sys

    web.run_app(fake_app(), host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 9999, access_log=None)
