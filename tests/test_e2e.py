"""End to end: the real openai and anthropic SDKs through the proxy to the fake upstream, rows in SQLite."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from tests.fake_openrouter import CACHED_TOKENS, COMPLETION_TOKENS, KEYS, PROMPT_TOKENS, REASONING_TOKENS, RECEIVED, fake_cost

KEY = "sk-or-v1-test-" + "ab" * 20


def _openai(proxy: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base, api_key=KEY, max_retries=0)


def _anthropic(proxy: Any) -> anthropic.AsyncAnthropic:
    # Claude Code style: ANTHROPIC_BASE_URL=http://host:port/api, key as a bearer token.
    return anthropic.AsyncAnthropic(base_url=str(proxy.server.make_url("/api")), auth_token=KEY, max_retries=0)


def _assert_usage_row(row: dict[str, Any], model: str, *, reasoning: int | None = REASONING_TOKENS) -> None:
    assert row["model"] == model
    assert row["input_tokens"] == PROMPT_TOKENS
    assert row["cached_tokens"] == CACHED_TOKENS
    assert row["output_tokens"] == COMPLETION_TOKENS
    assert row["reasoning_tokens"] == reasoning
    assert Decimal(row["cost_reported_usd"]) == Decimal(str(float(fake_cost(model))))
    assert row["cost_usd"] == row["cost_reported_usd"]
    assert row["cost_source"] == "reported"
    assert row["outcome"] == "ok"
    assert row["status"] == 200
    assert row["generation_id"].startswith("gen-")
    assert row["key_fingerprint"] and KEY not in json.dumps(row)
    # The row id is a UUIDv7 in hex: the Unix millisecond it was made, then random bits.
    assert uuid.UUID(hex=row["id"]).version == 7 and uuid.UUID(hex=row["id"]).hex == row["id"]
    assert abs(int(row["id"][:12], 16) / 1000 - datetime.fromisoformat(row["started_at"]).timestamp()) < 5


async def test_openai_chat_not_streamed(proxy: Any) -> None:
    async with _openai(proxy) as client:
        reply = await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content.startswith("hello")
    assert reply.usage is not None and reply.usage.prompt_tokens == PROMPT_TOKENS
    await proxy.settle()
    [row] = proxy.rows()
    _assert_usage_row(row, "openai/gpt-4o")
    assert row["streamed"] == 0 and row["endpoint"] == "chat/completions"
    assert row["model_requested"] == "openai/gpt-4o"
    assert row["provider"] == "FakeProvider"


async def test_row_ids_follow_the_order_requests_started_in(proxy: Any) -> None:
    # Time-ordered ids put each new row at the end of the primary-key index: random ones wrote a
    # random page of it per row, which cost the writer ~25% of its CPU at 60k rows (issue 15).
    async with _openai(proxy) as client:
        for _ in range(6):
            await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}])
            await asyncio.sleep(0.002)
    await proxy.settle()
    rows = proxy.rows()
    assert len(rows) == 6
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)


async def test_openai_chat_streamed(proxy: Any) -> None:
    async with _openai(proxy) as client:
        stream = await client.chat.completions.create(
            model="meta-llama/llama-3.1-8b-instruct", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = ""
        usage = None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
    assert text == "".join(f"word{i} " for i in range(5))
    assert usage is not None and usage.completion_tokens == COMPLETION_TOKENS
    await proxy.settle()
    [row] = proxy.rows()
    _assert_usage_row(row, "meta-llama/llama-3.1-8b-instruct")
    assert row["streamed"] == 1
    assert row["ttfb_ms"] is not None and row["duration_ms"] >= row["ttfb_ms"]


async def test_openai_responses_streamed_and_not(proxy: Any) -> None:
    async with _openai(proxy) as client:
        reply = await client.responses.create(model="openai/gpt-4o", input="hi")
        assert reply.output_text == "hello there"
        stream = await client.responses.create(model="openai/gpt-4o", input="hi", stream=True)
        kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    await proxy.settle()
    rows = proxy.rows()
    assert [r["streamed"] for r in rows] == [0, 1]
    for row in rows:
        _assert_usage_row(row, "openai/gpt-4o")
        assert row["endpoint"] == "responses"


async def test_anthropic_messages_streamed_and_not(proxy: Any) -> None:
    model = "anthropic/claude-sonnet-4.5"
    async with _anthropic(proxy) as client:
        reply = await client.messages.create(model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
        assert reply.content[0].text == "hello"
        async with client.messages.stream(model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as stream:
            text = "".join([t async for t in stream.text_stream])
    assert text == "".join(f"w{i} " for i in range(5))
    await proxy.settle()
    rows = proxy.rows()
    assert [r["streamed"] for r in rows] == [0, 1]
    for row in rows:
        # Anthropic reports cache reads apart; the row's input_tokens includes them.
        _assert_usage_row(row, model, reasoning=None)
        assert row["endpoint"] == "messages"


async def test_stream_bytes_identical_to_direct(proxy: Any, upstream: Any) -> None:
    body = json.dumps({"model": "openai/gpt-4o", "stream": True, "messages": []}).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", "X-Fake-Chunks": "40"}
    async with aiohttp.ClientSession() as session:
        async with session.post(upstream.make_url("/api/v1/chat/completions"), data=body, headers=headers) as direct:
            direct_bytes = await direct.read()
        async with session.post(f"{proxy.base}/chat/completions", data=body, headers=headers) as via:
            via_bytes = await via.read()
            assert via.headers["Content-Type"] == "text/event-stream"
    # Generation ids differ per call; everything else is byte for byte the same.
    import re

    normalise = lambda b: re.sub(rb"gen-[0-9a-f]{20}", b"gen-X", b)  # noqa: E731
    assert normalise(via_bytes) == normalise(direct_bytes)
    assert via_bytes.startswith(b": OPENROUTER PROCESSING\n\n")


async def test_ten_megabyte_body_passes_byte_identical(proxy: Any, upstream: Any) -> None:
    filler = ("x" * 1000 + "\\u00e9") * 10_000
    body = ('{"messages":[{"role":"user","content":"' + filler + '"}],  "model" : "openai/gpt-4o"}').encode()
    assert len(body) > 10_000_000
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{proxy.base}/chat/completions?beta=true",
            data=io.BytesIO(body),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", "anthropic-beta": "x,y", "X-Title": "Aider"},
        ) as response:
            assert response.status == 200
    received = upstream.app[RECEIVED][-1]
    assert received["body"] == body
    assert received["path"] == "/api/v1/chat/completions?beta=true"
    assert received["headers"]["anthropic-beta"] == "x,y"
    assert received["headers"]["Authorization"] == f"Bearer {KEY}"
    assert received["headers"]["X-Title"] == "Aider"
    await proxy.settle()
    [row] = proxy.rows()
    assert row["model_requested"] == "openai/gpt-4o"
    assert row["client"] == "Aider"


async def test_a_cookie_the_upstream_sets_goes_to_its_caller_only(start_proxy: Any, upstream: Any) -> None:
    """The proxy's one upstream session is shared by every client: it must keep no cookie jar, or a
    cookie set in one client's reply would be sent upstream with every other client's requests.
    The upstream is named `localhost`, as openrouter.ai is a name: a jar refuses cookies from an IP."""
    proxy = await start_proxy(upstream=f"http://localhost:{upstream.port}/api/v1")
    body = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as first:
        async with first.post(f"{proxy.base}/chat/completions", json=body, headers={**headers, "X-Fake": "set-cookie"}) as response:
            assert response.status == 200
            assert "__cf_bm=for-the-caller-only" in response.headers["Set-Cookie"]  # passed back to its caller
    async with aiohttp.ClientSession() as second:
        async with second.post(f"{proxy.base}/chat/completions", json=body, headers=headers) as response:
            assert response.status == 200
        async with second.post(f"{proxy.base}/chat/completions", json=body, headers={**headers, "Cookie": "mine=1"}) as response:
            assert response.status == 200
    _, other, own = upstream.app[RECEIVED]
    assert "Cookie" not in other["headers"]
    assert own["headers"]["Cookie"] == "mine=1"  # a client's own cookie header still crosses as sent


async def test_other_endpoints_pass_through_unrecorded(proxy: Any, upstream: Any) -> None:
    upstream.app[KEYS].add(KEY)  # GET /key answers 401 for a key OpenRouter does not know
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as session:
        for method, path in (
            ("GET", "/models"),
            ("GET", "/models/openai/gpt-4o/endpoints"),
            ("GET", "/key"),
            ("GET", "/credits"),
            ("POST", "/messages/count_tokens"),
        ):
            async with session.request(method, f"{proxy.base}{path}", headers=headers, json={} if method == "POST" else None) as response:
                assert response.status == 200, path
        async with session.post(f"{proxy.base}/embeddings", json={"model": "openai/text-embedding-3-small", "input": "x"}, headers=headers) as response:
            assert (await response.json())["usage"]["prompt_tokens"] == 8
    seen = [r["path"] for r in upstream.app[RECEIVED]]
    assert seen == [
        "/api/v1/models",
        "/api/v1/models/openai/gpt-4o/endpoints",
        "/api/v1/key",
        "/api/v1/credits",
        "/api/v1/messages/count_tokens",
        "/api/v1/embeddings",
    ]
    await proxy.settle()
    [row] = proxy.rows()  # only the billed call (embeddings) is a row
    assert row["endpoint"] == "embeddings" and Decimal(row["cost_usd"]) == Decimal("0.00000016")


async def test_v1_paths_websocket_and_claude_codes_probe(proxy: Any, upstream: Any) -> None:
    base = str(proxy.server.make_url("/")).rstrip("/")
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0) as client:
        reply = await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert reply.usage is not None
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy.base}/responses", headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as response:
            assert response.status == 426
            assert "WebSocket" in (await response.json())["error"]["message"]
        async with session.head(f"{base}/api/api/hello") as response:
            assert response.status == 200
    assert [r["path"] for r in upstream.app[RECEIVED]] == ["/api/v1/chat/completions"]
    await proxy.settle()
    assert len(proxy.rows()) == 1


async def test_gzip_upstream_reply_reaches_the_client_decoded_without_a_stale_encoding(proxy: Any) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(
            f"{proxy.base}/chat/completions",
            json={"model": "openai/gpt-4o", "messages": []},
            headers={"Authorization": f"Bearer {KEY}", "X-Fake": "gzip", "Accept-Encoding": "gzip, br, zstd"},
        ) as response:
            raw = await response.read()
            assert "Content-Encoding" not in response.headers
            assert int(response.headers["Content-Length"]) == len(raw)
    assert json.loads(raw)["usage"]["prompt_tokens"] == PROMPT_TOKENS
    await proxy.settle()
    [row] = proxy.rows()
    assert row["input_tokens"] == PROMPT_TOKENS and row["cost_source"] == "reported"


async def test_compressed_request_body_passes_through_compressed(proxy: Any, upstream: Any) -> None:
    import gzip

    raw = json.dumps({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    packed = gzip.compress(raw)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.base}/chat/completions", data=packed, headers=headers) as response:
            assert response.status == 200
            assert (await response.json())["usage"]["prompt_tokens"] == PROMPT_TOKENS
        # A body that says gzip but is not: forwarded as it is, and the upstream's refusal returned.
        async with session.post(f"{proxy.base}/chat/completions", data=b"\x1f\x8b not gzip", headers=headers) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == 400
    first, second = upstream.app[RECEIVED]
    assert first["body"] == packed and first["headers"]["Content-Encoding"] == "gzip"
    assert second["body"] == b"\x1f\x8b not gzip"
    await proxy.settle()
    rows = proxy.rows()
    assert [r["status"] for r in rows] == [200, 400]
    assert rows[0]["input_tokens"] == PROMPT_TOKENS


async def test_reply_broken_mid_body_on_messages_is_an_anthropic_error(proxy: Any, caplog: Any) -> None:
    import logging

    caplog.set_level(logging.WARNING, logger="proxy.server.forward")
    async with anthropic.AsyncAnthropic(base_url=str(proxy.server.make_url("/api")), auth_token=KEY, max_retries=0) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(
                model="anthropic/claude-sonnet-4.5", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Fake": "short-body"},
            )
    assert caught.value.status_code == 502
    assert caught.value.body == {"type": "error", "error": {"type": "api_error", "message": caught.value.body["error"]["message"]}}
    assert "upstream connection broke" in caught.value.body["error"]["message"]
    assert any("event=upstream_reply_broken" in r.getMessage() for r in caplog.records)
    await proxy.settle()
    [row] = proxy.rows()
    assert (row["status"], row["outcome"]) == (502, "aborted")
