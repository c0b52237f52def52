"""Upstream faults: error statuses, refused and silent upstreams, resets mid-stream, long stalls, junk and absurd usage."""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from tests.faults.conftest import CHAT, KEY, free_port, metric_value
from tests.fake_openrouter import FAULTS, GENERATIONS, PROMPT_TOKENS

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.mark.parametrize("status", [500, 502, 503, 429])
@pytest.mark.parametrize("stream", [False, True])
async def test_error_status_passes_through_with_body_and_retry_after(proxy: Any, status: int, stream: bool) -> None:
    response = await proxy.client.post(
        "/api/v1/chat/completions", json={**CHAT, "stream": stream}, headers={**AUTH, "X-Fake": f"error{status}"}
    )
    body = await response.json()
    assert response.status == status
    assert response.headers["Retry-After"] == "7"
    assert body == {"error": {"code": status, "message": f"fake upstream says {status}", "metadata": {}}}
    await proxy.settle()
    [row] = proxy.rows()
    assert (row["status"], row["outcome"], row["error"]) == (status, "upstream_error", f"http_{status}")
    assert row["cost_usd"] is None and row["cost_source"] == "none"
    text = await proxy.metrics_text()
    reason = "http_5xx" if status >= 500 else "http_4xx"
    assert metric_value(text, f'openrouter_proxy_upstream_errors_total{{reason="{reason}"}}') == 1


@pytest.mark.parametrize(
    ("path", "anthropic"), [("/api/v1/chat/completions", False), ("/api/v1/messages", True), ("/v1/messages", True)]
)
async def test_connection_refused_is_a_502_envelope(start_proxy: Any, make_config: Any, path: str, anthropic: bool) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api/v1"
    proxy = await start_proxy(make_config(upstream=dead))
    started = time.monotonic()
    response = await proxy.client.post(path, json=CHAT, headers=AUTH)
    body = await response.json()
    assert time.monotonic() - started < 5
    assert response.status == 502
    if anthropic:
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
        assert "cannot reach the upstream" in body["error"]["message"]
    else:
        assert body["error"]["code"] == 502 and "cannot reach the upstream" in body["error"]["message"]
    await proxy.settle()
    [row] = proxy.rows()
    assert (row["status"], row["outcome"], row["error"]) == (502, "proxy_error", "upstream_unreachable")
    assert metric_value(await proxy.metrics_text(), 'openrouter_proxy_upstream_errors_total{reason="connect"}') == 1


async def test_no_response_is_a_504_after_the_first_byte_timeout(start_proxy: Any, make_config: Any) -> None:
    proxy = await start_proxy(make_config(first_byte_timeout_s=0.5))
    started = time.monotonic()
    response = await proxy.client.post("/api/v1/chat/completions", json=CHAT, headers={**AUTH, "X-Fake": "stall"})
    body = await response.json()
    elapsed = time.monotonic() - started
    assert response.status == 504 and body["error"]["code"] == 504
    assert 0.4 < elapsed < 3
    await proxy.settle()
    [row] = proxy.rows()
    assert (row["status"], row["outcome"], row["error"]) == (504, "proxy_error", "upstream_timeout")


async def test_first_byte_timeout_ends_only_the_stalled_request(start_proxy: Any, make_config: Any) -> None:
    # One timer task keeps every request's first-byte deadline: it must cut the stalled one at
    # its deadline and leave alone the ones that answer, before, during and after it.
    proxy = await start_proxy(make_config(first_byte_timeout_s=0.6))

    async def call(fake: str | None, delay_s: float) -> int:
        await asyncio.sleep(delay_s)
        headers = {**AUTH, "X-Fake": fake} if fake else AUTH
        response = await proxy.client.post("/api/v1/chat/completions", json=CHAT, headers=headers)
        await response.read()
        return response.status

    started = time.monotonic()
    statuses = await asyncio.gather(call("stall", 0), *(call(None, 0.1 * i) for i in range(10)))
    assert statuses == [504] + [200] * 10
    assert 0.5 < time.monotonic() - started < 3
    await proxy.settle()
    outcomes = sorted((row["status"], row["error"]) for row in proxy.rows())
    assert outcomes == [(200, None)] * 10 + [(504, "upstream_timeout")]


async def _read_until_broken(response: aiohttp.ClientResponse) -> tuple[bytes, BaseException | None]:
    got = b""
    try:
        async for chunk in response.content.iter_any():
            got += chunk
    except aiohttp.ClientError as exc:
        return got, exc
    return got, None


@pytest.mark.parametrize("endpoint", ["chat/completions", "messages"])
async def test_reset_mid_stream_ends_the_client_stream_and_backfills_the_cost(
    start_proxy: Any, make_config: Any, upstream: Any, endpoint: str
) -> None:
    proxy = await start_proxy(make_config(backfill_delays_s=(0.1, 0.2)))
    model = "openai/gpt-4o" if endpoint == "chat/completions" else "anthropic/claude-sonnet-4.5"
    response = await proxy.client.post(
        f"/api/v1/{endpoint}", json={**CHAT, "model": model, "stream": True}, headers={**AUTH, "X-Fake": "drop"}
    )
    assert response.status == 200
    got, error = await _read_until_broken(response)
    # The client must see a broken stream, not a clean end that merely looks short.
    assert error is not None, got
    assert b"data:" in got and b"[DONE]" not in got and b"message_stop" not in got
    await proxy.settle()
    [row] = proxy.rows()
    assert (row["outcome"], row["error"], row["status"]) == ("aborted", "upstream_reset", 200)
    if endpoint == "messages":
        # message_start had arrived: the prompt tokens seen so far are kept, not zeroed.
        assert row["input_tokens"] == PROMPT_TOKENS
    billed = upstream.app[GENERATIONS][row["generation_id"]]["total_cost"]

    def filled() -> bool:
        return bool(proxy.rows()[0]["cost_source"] == "generation")

    for _ in range(200):
        if filled():
            break
        await asyncio.sleep(0.02)
    [row] = proxy.rows()
    assert row["cost_source"] == "generation"
    assert Decimal(row["cost_usd"]) == Decimal(str(billed))
    assert row["input_tokens"] == PROMPT_TOKENS
    text = await proxy.metrics_text()
    assert metric_value(text, 'openrouter_proxy_upstream_errors_total{reason="stream_error"}') == 1


async def test_a_three_second_gap_between_chunks_is_not_cut(proxy: Any) -> None:
    started = time.monotonic()
    response = await proxy.client.post(
        "/api/v1/chat/completions", json={**CHAT, "stream": True}, headers={**AUTH, "X-Fake-Gap-Ms": "3000"}
    )
    text = await response.text()
    assert time.monotonic() - started >= 3
    assert response.status == 200 and text.rstrip().endswith("data: [DONE]")
    await proxy.settle()
    [row] = proxy.rows()
    assert row["outcome"] == "ok" and row["cost_source"] == "reported"


async def test_each_chunk_reaches_the_client_before_the_upstream_sends_the_next(proxy: Any) -> None:
    """No buffering on the way back: the events sent before a 2 s pause are at the client during it
    (a proxy that held a chunk until the next one, or until a buffer filled, fails here)."""
    started = time.monotonic()
    response = await proxy.client.post(
        "/api/v1/chat/completions", json={**CHAT, "stream": True}, headers={**AUTH, "X-Fake-Gap-Ms": "2000"}
    )
    assert response.status == 200
    got = b""
    before_gap = None
    async for chunk in response.content.iter_any():
        got += chunk
        if before_gap is None and got.count(b"data: ") >= 2:
            before_gap = time.monotonic() - started
    assert before_gap is not None and before_gap < 1.0, before_gap
    assert time.monotonic() - started >= 2 and got.rstrip().endswith(b"data: [DONE]")


@pytest.mark.parametrize("stream", [True, False])
async def test_garbage_from_upstream_never_crashes_a_handler(
    proxy: Any, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = await proxy.client.post(
        "/api/v1/chat/completions", json={**CHAT, "stream": stream}, headers={**AUTH, "X-Fake": "garbage"}
    )
    body = await response.read()
    assert response.status == 200
    # Junk is the client's to judge: passed on byte for byte.
    assert (b"\x00\xff\xfe junk" in body) if stream else (body.startswith(b'{"id": "gen-') and not body.endswith(b"}"))
    await proxy.settle()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    [row] = proxy.rows()
    assert row["status"] == 200 and row["input_tokens"] is None and row["cost_reported_usd"] is None
    assert (await proxy.client.get("/healthz")).status == 200


async def test_truncated_models_listing_is_passed_on(proxy: Any, upstream: Any) -> None:
    upstream.app[FAULTS].add("garbage")
    models = await proxy.client.get("/api/v1/models")
    assert models.status == 200 and (await models.read()).startswith(b'{"data": [{"id": "truncated')
    assert (await proxy.client.get("/healthz")).status == 200


@pytest.mark.parametrize("stream", [True, False])
async def test_absurd_usage_numbers_are_recorded_as_unknown(start_proxy: Any, make_config: Any, stream: bool) -> None:
    # Long back-fill delays: this test looks at what the response itself left in the row.
    proxy = await start_proxy(make_config(backfill_delays_s=(60.0,)))
    response = await proxy.client.post(
        "/api/v1/chat/completions", json={**CHAT, "stream": stream}, headers={**AUTH, "X-Fake": "absurd-usage"}
    )
    assert response.status == 200
    payload = await response.read()
    assert b"1000000000000000" in payload
    await proxy.settle()
    [row] = proxy.rows()
    for column in ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens"):
        assert row[column] is None, (column, row[column])
    assert row["cost_reported_usd"] is None and row["cost_usd"] is None
    text = await proxy.metrics_text()
    assert metric_value(text, "openrouter_proxy_tokens_total") == 0
    assert metric_value(text, "openrouter_proxy_cost_usd_total") == 0
