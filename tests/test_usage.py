"""Usage parsers: each fixture whole, at every split and byte by byte; each shape's counting rule; bad numbers; fuzzing."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.usage import Usage, parser_for
from tests.test_sse import splits
from proxy.usage.chat import ChatParser
from proxy.usage.messages import MessagesParser
from proxy.usage.responses import ResponsesParser

SSE_DIR = Path(__file__).parent / "fixtures" / "sse"

EXPECTED: dict[str, tuple[str, Usage]] = {
    "chat_usage.txt": (
        "chat/completions",
        Usage(
            model="anthropic/claude-sonnet-4.5",
            provider="Anthropic",
            generation_id="gen-1764230000-a1b2c3d4e5f6",
            input_tokens=1500,
            output_tokens=420,
            cached_tokens=1000,
            cache_write_tokens=200,
            reasoning_tokens=120,
            web_search_requests=2,
            input_audio_tokens=0,
            output_image_tokens=0,
            cost_reported=Decimal("0.010794"),
            is_byok=False,
            complete=True,
        ),
    ),
    "chat_crlf.txt": (
        "chat/completions",
        Usage(
            model="openai/gpt-4o",
            provider="OpenAI",
            generation_id="gen-1764230100-crlf0000",
            input_tokens=812,
            output_tokens=64,
            cached_tokens=512,
            reasoning_tokens=0,
            cost_reported=Decimal("0.00267"),
            is_byok=True,
            complete=True,
        ),
    ),
    "chat_error.txt": (
        "chat/completions",
        Usage(
            model="meta-llama/llama-3.1-8b-instruct",
            provider="DeepInfra",
            generation_id="gen-1764230200-err00000",
            error="502",
        ),
    ),
    "messages_cache.txt": (
        "messages",
        Usage(
            model="anthropic/claude-sonnet-4.5",
            generation_id="gen-1764230300-msg00000",
            # Anthropic's 30 uncached + 2000 written + 9000 read: every prompt token.
            input_tokens=11030,
            output_tokens=250,
            cached_tokens=9000,
            cache_write_tokens=2000,
            cost_reported=Decimal("0.01395"),
            complete=True,
        ),
    ),
    "messages_claude_code.txt": (
        "messages",
        Usage(
            model="anthropic/claude-sonnet-4.5",
            generation_id="gen-1764230600-cc000000",
            # message_delta's nulls mean "no new value": message_start's 12 + 2000 + 9000 stand.
            input_tokens=11012,
            output_tokens=310,
            cached_tokens=9000,
            cache_write_tokens=2000,
            cache_write_1h_tokens=0,
            service_tier="standard",
            complete=True,
        ),
    ),
    "chat_byok_search.txt": (
        "chat/completions",
        Usage(
            model="anthropic/claude-sonnet-4.5",
            provider="Anthropic",
            generation_id="gen-1764230700-byok0000",
            input_tokens=2000,
            output_tokens=500,
            cached_tokens=0,
            cache_write_tokens=0,
            reasoning_tokens=0,
            web_search_requests=3,
            input_audio_tokens=0,
            output_image_tokens=0,
            cost_reported=Decimal("0.000675"),
            is_byok=True,
            upstream_cost=Decimal("0.0135"),
            complete=True,
        ),
    ),
    "responses_completed.txt": (
        "responses",
        Usage(
            model="openai/gpt-5",
            generation_id="gen-1764230400-resp0000",
            input_tokens=3000,
            output_tokens=900,
            cached_tokens=2048,
            reasoning_tokens=640,
            cost_reported=Decimal("0.0102"),
            complete=True,
        ),
    ),
    "responses_failed.txt": (
        "responses",
        Usage(model="openai/gpt-5", generation_id="gen-1764230500-fail0000", error="server_error"),
    ),
}
NAMES = sorted(EXPECTED)


def parse(endpoint: str, chunks: list[bytes], streamed: bool = True, generation_id: str | None = None) -> Usage:
    parser = parser_for(endpoint, streamed, generation_id)
    for chunk in chunks:
        parser.feed(chunk)
    return parser.finish()


def body(endpoint: str, obj: Any, generation_id: str | None = None) -> Usage:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return parse(endpoint, [raw], streamed=False, generation_id=generation_id)


def fixture(name: str) -> bytes:
    return (SSE_DIR / name).read_bytes()


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(p.name for p in SSE_DIR.glob("*.txt")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_fixture_whole(name: str) -> None:
    endpoint, expected = EXPECTED[name]
    assert parse(endpoint, [fixture(name)]) == expected


@pytest.mark.parametrize("name", NAMES)
def test_fixture_split_at_every_offset(name: str) -> None:
    endpoint, expected = EXPECTED[name]
    data = fixture(name)
    for offset in range(len(data) + 1):
        assert parse(endpoint, [data[:offset], data[offset:]]) == expected, offset


@pytest.mark.parametrize("name", NAMES)
def test_fixture_one_byte_at_a_time(name: str) -> None:
    endpoint, expected = EXPECTED[name]
    data = fixture(name)
    assert parse(endpoint, [data[i : i + 1] for i in range(len(data))]) == expected


@pytest.mark.parametrize("name", NAMES)
def test_fixture_without_trailing_newlines(name: str) -> None:
    endpoint, expected = EXPECTED[name]
    assert parse(endpoint, [fixture(name).rstrip(b"\r\n")]) == expected


@pytest.mark.parametrize(
    ("name", "marker"),
    [
        ("chat_usage.txt", b'"choices":[],"usage"'),
        ("messages_cache.txt", b'"type":"message_delta"'),
        ("responses_completed.txt", b'"type":"response.completed"'),
    ],
)
def test_stream_without_its_usage_event_invents_nothing(name: str, marker: bytes) -> None:
    endpoint, _ = EXPECTED[name]
    events = fixture(name).split(b"\n\n")
    kept = [event for event in events if marker not in event]
    assert len(kept) == len(events) - 1
    usage = parse(endpoint, [b"\n\n".join(kept)])
    assert usage.complete is False
    if endpoint == "messages":
        # message_start already told us the prompt; the output is what is missing.
        assert usage.output_tokens == 1
        assert usage.cost_reported is None
    else:
        assert usage.input_tokens is None and usage.output_tokens is None
        assert usage.cached_tokens is None and usage.reasoning_tokens is None
        assert usage.cost_reported is None


def test_parser_for_picks_the_shape() -> None:
    assert isinstance(parser_for("chat/completions", True), ChatParser)
    assert isinstance(parser_for("completions", False), ChatParser)
    assert isinstance(parser_for("embeddings", False), ChatParser)
    assert isinstance(parser_for("messages", True), MessagesParser)
    assert isinstance(parser_for("responses", True), ResponsesParser)


# ---- each shape's counting rule, as JSON bodies ------------------------------------------------


def test_chat_body_prompt_tokens_already_include_cache() -> None:
    usage = body(
        "chat/completions",
        {
            "id": "gen-abc",
            "model": "openai/gpt-4o",
            "provider": "OpenAI",
            "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 200,
                "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 100, "audio_tokens": 5},
                "completion_tokens_details": {"reasoning_tokens": 150, "image_tokens": 3},
                "cost": 0.0042,
                "is_byok": True,
                "server_tool_use": {"web_search_requests": 1},
            },
        },
    )
    assert usage == Usage(
        model="openai/gpt-4o", provider="OpenAI", generation_id="gen-abc",
        input_tokens=1000, output_tokens=200, cached_tokens=600, cache_write_tokens=100,
        reasoning_tokens=150, web_search_requests=1, input_audio_tokens=5, output_image_tokens=3,
        cost_reported=Decimal("0.0042"), is_byok=True, complete=True,
    )


def test_embeddings_body() -> None:
    usage = body("embeddings", {"object": "list", "model": "openai/text-embedding-3-small",
                                "usage": {"prompt_tokens": 8, "total_tokens": 8, "cost": 0.00000016}})
    assert usage.input_tokens == 8 and usage.output_tokens is None
    assert usage.cost_reported == Decimal("0.00000016") and usage.complete


def test_responses_body_input_tokens_include_cache_and_output_includes_reasoning() -> None:
    usage = body(
        "responses",
        {"id": "gen-r1", "object": "response", "model": "openai/gpt-5", "status": "completed",
         "usage": {"input_tokens": 500, "input_tokens_details": {"cached_tokens": 400},
                   "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 250},
                   "cost": "0.003", "is_byok": False}},
    )
    assert usage == Usage(model="openai/gpt-5", generation_id="gen-r1", input_tokens=500, output_tokens=300,
                          cached_tokens=400, reasoning_tokens=250, cost_reported=Decimal("0.003"),
                          is_byok=False, complete=True)


def test_messages_body_adds_cache_reads_and_writes_to_input() -> None:
    usage = body(
        "messages",
        {"id": "gen-m1", "type": "message", "model": "anthropic/claude-sonnet-4.5",
         "content": [{"type": "text", "text": "hi"}],
         "usage": {"input_tokens": 7, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 900,
                   "output_tokens": 20, "cost": 0.001}},
    )
    assert usage.input_tokens == 1007
    assert usage.cached_tokens == 900 and usage.cache_write_tokens == 100
    assert usage.output_tokens == 20 and usage.cost_reported == Decimal("0.001") and usage.complete


def test_messages_without_cache_fields_counts_input_alone() -> None:
    usage = body("messages", {"type": "message", "usage": {"input_tokens": 7, "output_tokens": 2}})
    assert usage.input_tokens == 7 and usage.cached_tokens is None and usage.cache_write_tokens is None


def test_messages_null_cache_fields_mean_none_used() -> None:
    usage = body("messages", {"type": "message", "usage": {"input_tokens": 7, "output_tokens": 2,
                                                           "cache_read_input_tokens": None,
                                                           "cache_creation_input_tokens": None}})
    assert usage.input_tokens == 7


def test_messages_delta_replaces_start_counts() -> None:
    stream = (
        b'data: {"type":"message_start","message":{"id":"gen-x","model":"m","usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
        b'data: {"type":"message_delta","usage":{"output_tokens":5}}\n\n'
        b'data: {"type":"message_delta","usage":{"output_tokens":9}}\n\n'
    )
    usage = parse("messages", [stream])
    assert (usage.input_tokens, usage.output_tokens, usage.complete) == (10, 9, True)


# ---- nonsense numbers are unknown, never 0, never a crash --------------------------------------

BAD_COUNTS: list[Any] = [None, -1, True, False, "12", 12.5, 100_000_001, 10**30, [], {}, "NaN"]


def _chat_with(prompt: Any) -> dict[str, Any]:
    return {"usage": {"prompt_tokens": prompt, "completion_tokens": 5, "cost": 0.01}}


@pytest.mark.parametrize("bad", BAD_COUNTS, ids=repr)
def test_chat_bad_count_is_unknown(bad: Any) -> None:
    usage = body("chat/completions", _chat_with(bad))
    assert usage.input_tokens is None
    assert usage.output_tokens == 5 and usage.complete


@pytest.mark.parametrize("bad", BAD_COUNTS, ids=repr)
def test_responses_bad_count_is_unknown(bad: Any) -> None:
    usage = body("responses", {"usage": {"input_tokens": 3, "output_tokens": bad}})
    assert usage.output_tokens is None and usage.input_tokens == 3


@pytest.mark.parametrize("bad", BAD_COUNTS, ids=repr)
def test_messages_bad_uncached_input_makes_input_unknown(bad: Any) -> None:
    usage = body("messages", {"usage": {"input_tokens": bad, "cache_read_input_tokens": 50, "output_tokens": 4}})
    assert usage.input_tokens is None and usage.output_tokens == 4


@pytest.mark.parametrize("bad", [b for b in BAD_COUNTS if b is not None], ids=repr)
@pytest.mark.parametrize("field", ["cache_read_input_tokens", "cache_creation_input_tokens"])
def test_messages_bad_cache_part_makes_input_unknown(field: str, bad: Any) -> None:
    # Adding up a nonsense part as 0 would report a made-up (too small) prompt.
    usage = body("messages", {"usage": {"input_tokens": 10, field: bad, "output_tokens": 4}})
    assert usage.input_tokens is None
    assert usage.output_tokens == 4


@pytest.mark.parametrize("raw", [b"Infinity", b"-Infinity", b"NaN", b"1e400", b"1" * 5000])
def test_non_finite_and_huge_json_numbers(raw: bytes) -> None:
    data = b'{"usage":{"prompt_tokens":' + raw + b',"completion_tokens":1,"cost":' + raw + b"}}"
    usage = parse("chat/completions", [data], streamed=False)
    assert usage.input_tokens is None and usage.cost_reported is None


def test_integral_float_counts_are_accepted() -> None:
    assert body("chat/completions", _chat_with(12.0)).input_tokens == 12


@pytest.mark.parametrize("bad", [None, -0.5, True, "abc", "1e9", 1e9, [], {}], ids=repr)
def test_bad_cost_is_unknown(bad: Any) -> None:
    usage = body("chat/completions", {"usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost": bad}})
    assert usage.cost_reported is None and usage.input_tokens == 1


def test_cost_zero_is_zero_and_string_cost_is_exact() -> None:
    assert body("chat/completions", {"usage": {"cost": 0}}).cost_reported == Decimal(0)
    assert body("chat/completions", {"usage": {"cost": "0.000001234"}}).cost_reported == Decimal("0.000001234")
    assert body("chat/completions", {"usage": {"cost": 0.1}}).cost_reported == Decimal("0.1")


@pytest.mark.parametrize(
    ("endpoint", "payload"),
    [
        ("chat/completions", {"usage": {"prompt_tokens": 10, "completion_tokens": 5,
                                        "prompt_tokens_details": {"cached_tokens": 11, "cache_write_tokens": 11},
                                        "completion_tokens_details": {"reasoning_tokens": 6}}}),
        ("responses", {"usage": {"input_tokens": 10, "output_tokens": 5,
                                 "input_tokens_details": {"cached_tokens": 11, "cache_write_tokens": 11},
                                 "output_tokens_details": {"reasoning_tokens": 6}}}),
    ],
)
def test_part_larger_than_whole_is_unknown(endpoint: str, payload: dict[str, Any]) -> None:
    usage = body(endpoint, payload)
    assert (usage.input_tokens, usage.output_tokens) == (10, 5)
    assert usage.cached_tokens is None and usage.cache_write_tokens is None and usage.reasoning_tokens is None


def test_part_equal_to_whole_is_kept() -> None:
    usage = body("chat/completions", {"usage": {"prompt_tokens": 10, "completion_tokens": 5,
                                                "prompt_tokens_details": {"cached_tokens": 10},
                                                "completion_tokens_details": {"reasoning_tokens": 5}}})
    assert usage.cached_tokens == 10 and usage.reasoning_tokens == 5


def test_bad_whole_does_not_become_its_part() -> None:
    usage = body("chat/completions", {"usage": {"prompt_tokens": -1, "prompt_tokens_details": {"cached_tokens": 3}}})
    assert usage.input_tokens is None


@pytest.mark.parametrize("bad", [None, "yes", 1, 0, "true"], ids=repr)
def test_is_byok_only_a_real_bool(bad: Any) -> None:
    assert body("chat/completions", {"usage": {"is_byok": bad}}).is_byok is None
    assert body("responses", {"usage": {"is_byok": bad}}).is_byok is None


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[1,2]", b'"usage"', b"null", b"{", b"\xff\xfe\x00", b"[" * 100_000, b'{"usage": 5}',
     b'{"usage": [1]}', b'{"model": 7, "provider": [], "id": 9}'],
)
@pytest.mark.parametrize("endpoint", ["chat/completions", "messages", "responses"])
def test_junk_bodies_give_nothing(endpoint: str, raw: bytes) -> None:
    usage = parse(endpoint, [raw], streamed=False)
    assert usage == Usage()


def test_oversized_body_is_not_parsed() -> None:
    from proxy.usage._stream import MAX_BODY_BYTES

    parser = parser_for("chat/completions", False)
    parser.feed(b'{"usage":{"prompt_tokens":5},"pad":"')
    parser.feed(b"x" * MAX_BODY_BYTES)
    parser.feed(b'"}')
    assert parser.finish() == Usage()


# ---- errors inside a 200 ---------------------------------------------------------------------


def test_chat_error_without_code_uses_type_then_error() -> None:
    assert body("chat/completions", {"error": {"type": "rate_limit"}}).error == "rate_limit"
    assert body("chat/completions", {"error": {"message": "x"}}).error == "error"
    finish_only = {"choices": [{"delta": {}, "finish_reason": "error"}]}
    assert parse("chat/completions", [b"data: " + json.dumps(finish_only).encode() + b"\n\n"]).error == "error"


def test_messages_error_event() -> None:
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"gen-e","model":"m","usage":{"input_tokens":5,"output_tokens":1}}}\n\n'
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    usage = parse("messages", [stream])
    assert usage.error == "overloaded_error" and usage.complete is False and usage.input_tokens == 5


def test_messages_error_body() -> None:
    usage = body("messages", {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}})
    assert usage.error == "invalid_request_error" and not usage.complete


def test_responses_error_event() -> None:
    stream = b'data: {"type":"error","code":"rate_limit_exceeded","message":"slow down","sequence_number":3}\n\n'
    assert parse("responses", [stream]).error == "rate_limit_exceeded"


def test_responses_failed_without_error_object() -> None:
    stream = b'data: {"type":"response.failed","response":{"id":"gen-f","status":"failed","error":null}}\n\n'
    assert parse("responses", [stream]).error == "response.failed"


def test_text_that_mentions_usage_or_error_is_not_usage() -> None:
    delta = {"choices": [{"delta": {"content": 'say "usage": {"prompt_tokens": 5} and "error": 1'}}]}
    stream = b"data: {}\n\n" + b"data: " + json.dumps(delta).encode() + b"\n\n"
    assert parse("chat/completions", [stream]) == Usage()


# ---- the generation id -----------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["chat/completions", "messages", "responses"])
def test_generation_id_from_header_when_body_has_none(endpoint: str) -> None:
    usage = body(endpoint, {"id": "chatcmpl-123", "usage": {}}, generation_id="gen-from-header")
    assert usage.generation_id == "gen-from-header"


def test_generation_id_from_body() -> None:
    assert body("chat/completions", {"id": "gen-body-1"}).generation_id == "gen-body-1"
    assert body("responses", {"id": "gen-body-2"}).generation_id == "gen-body-2"
    assert body("messages", {"id": "gen-body-3", "type": "message"}).generation_id == "gen-body-3"
    assert body("chat/completions", {"id": "chatcmpl-1"}).generation_id is None
    assert body("chat/completions", {"id": 123}).generation_id is None


def test_model_and_provider_are_capped() -> None:
    usage = body("chat/completions", {"model": "m" * 5000, "provider": "p" * 5000})
    assert usage.model is not None and len(usage.model) <= 200
    assert usage.provider is not None and len(usage.provider) <= 200


# ---- fuzzing ---------------------------------------------------------------------------------

ENDPOINTS = ["chat/completions", "messages", "responses"]
NOTHING = Usage()


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ENDPOINTS), st.booleans(), st.binary(max_size=3000), st.data())
def test_random_bytes_never_raise_never_invent(endpoint: str, streamed: bool, data: bytes, draw: st.DataObject) -> None:
    usage = parse(endpoint, draw.draw(splits(data)), streamed=streamed)
    assert usage.complete is False
    assert usage == dataclasses.replace(NOTHING, error=usage.error, model=usage.model,
                                        provider=usage.provider, generation_id=usage.generation_id)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NAMES), st.data())
def test_fixture_random_splits(name: str, draw: st.DataObject) -> None:
    endpoint, expected = EXPECTED[name]
    assert parse(endpoint, draw.draw(splits(fixture(name)))) == expected


_no_newline = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
_no_object = st.text(max_size=60).map(
    lambda t: t.replace("\n", "").replace("\r", "").replace("{", "").encode("utf-8", "surrogatepass")
)
junk_event = st.one_of(
    _no_newline.map(lambda b: b":" + b + b"\n"),  # comment
    _no_newline.map(lambda b: b"event: " + b + b"\n"),
    _no_newline.map(lambda b: b"id: " + b + b"\n"),
    st.just(b"retry: 3000\n"),
    st.just(b"\n"),
    _no_object.map(lambda b: b"data: " + b + b"\n\n"),  # a whole event that is not a JSON object
    st.just(b'data: {"usage": \n\n'),  # truncated JSON
    st.just(b"data: [DONE]\n\n"),
    _no_newline.filter(lambda b: not b.startswith(b"data:") and b != b"").map(lambda b: b + b"\n"),
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NAMES), st.data())
def test_junk_between_events_changes_nothing(name: str, draw: st.DataObject) -> None:
    endpoint, expected = EXPECTED[name]
    text = fixture(name).replace(b"\r\n", b"\n")
    events = [e + b"\n\n" for e in text.split(b"\n\n") if e.strip(b"\n")]
    out = b""
    for event in events[:-1]:
        out += event + b"".join(draw.draw(st.lists(junk_event, max_size=3)))
    out += events[-1]
    assert parse(endpoint, draw.draw(splits(out))) == expected


def test_one_hour_writes_larger_than_all_writes_are_unknown() -> None:
    parser = parser_for("messages", False)
    parser.feed(json.dumps({"type": "message", "model": "m", "usage": {
        "input_tokens": 10, "output_tokens": 1, "cache_creation_input_tokens": 5,
        "cache_creation": {"ephemeral_1h_input_tokens": 9}}}).encode())
    usage = parser.finish()
    assert usage.cache_write_tokens == 5 and usage.cache_write_1h_tokens is None


# ---- issue 10: the documented shapes of /messages, BYOK and web search ---------------------------


def test_messages_delta_null_keeps_start_counts_and_cost_later() -> None:
    stream = (
        b'data: {"type":"message_start","message":{"id":"gen-x","model":"m","usage":{"input_tokens":3,'
        b'"cache_creation_input_tokens":2000,"cache_read_input_tokens":9000,"output_tokens":1}}}\n\n'
        b'data: {"type":"message_delta","usage":{"input_tokens":null,"cache_creation_input_tokens":null,'
        b'"cache_read_input_tokens":null,"output_tokens":40,"cost":null}}\n\n'
        b'data: {"type":"message_delta","usage":{"output_tokens":90,"cost":0.0123}}\n\n'
    )
    usage = parse("messages", [stream])
    assert (usage.input_tokens, usage.cached_tokens, usage.cache_write_tokens) == (11003, 9000, 2000)
    assert usage.output_tokens == 90 and usage.cost_reported == Decimal("0.0123") and usage.complete


def test_messages_byok_and_upstream_cost() -> None:
    usage = body("messages", {"type": "message", "usage": {
        "input_tokens": 100, "output_tokens": 10, "cost": 0.0001, "is_byok": True,
        "cost_details": {"upstream_inference_cost": 0.00045}}})
    assert usage.is_byok is True and usage.cost_reported == Decimal("0.0001")
    assert usage.upstream_cost == Decimal("0.00045")


def test_messages_reasoning_details_are_part_of_output() -> None:
    usage = body("messages", {"type": "message", "usage": {
        "input_tokens": 5, "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 200}}})
    assert usage.reasoning_tokens == 200 and usage.output_tokens == 300


def test_messages_every_iteration_is_billed() -> None:
    # Anthropic's compaction example: the top level counts only the last iteration.
    usage = body("messages", {"type": "message", "usage": {
        "input_tokens": 23000, "output_tokens": 1000,
        "iterations": [
            {"type": "compaction", "input_tokens": 180000, "output_tokens": 3500},
            {"type": "message", "input_tokens": 23000, "output_tokens": 1000, "cache_read_input_tokens": 500},
        ]}})
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens) == (203500, 4500, 500)


def test_messages_iterations_in_the_final_delta() -> None:
    stream = (
        b'data: {"type":"message_start","message":{"id":"gen-x","model":"m","usage":{"input_tokens":23000,"output_tokens":1}}}\n\n'
        b'data: {"type":"message_delta","usage":{"input_tokens":null,"output_tokens":1000,"iterations":['
        b'{"type":"compaction","input_tokens":180000,"output_tokens":3500},'
        b'{"type":"message","input_tokens":23000,"output_tokens":1000}]}}\n\n'
    )
    usage = parse("messages", [stream])
    assert (usage.input_tokens, usage.output_tokens) == (203000, 4500)


def test_messages_bad_iteration_count_is_unknown() -> None:
    usage = body("messages", {"type": "message", "usage": {
        "input_tokens": 1, "output_tokens": 1, "iterations": [{"input_tokens": "lots", "output_tokens": 1}]}})
    assert usage.input_tokens is None


def test_chat_web_search_details_and_non_byok_upstream_cost() -> None:
    usage = body("chat/completions", {"usage": {
        "prompt_tokens": 10, "completion_tokens": 5, "cost": 0.02, "is_byok": False,
        "cost_details": {"upstream_inference_cost": 0.019},
        "server_tool_use_details": {"web_search_requests": 4}}})
    assert usage.web_search_requests == 4
    # Carried as seen; accounting never adds it for a non-BYOK reply.
    assert usage.upstream_cost == Decimal("0.019") and usage.is_byok is False


def test_responses_web_search_items_are_counted() -> None:
    usage = body("responses", {"id": "gen-r", "model": "openai/gpt-5", "output": [
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "a"}},
        {"type": "web_search_call", "id": "ws_2", "status": "completed", "action": {"type": "search", "query": "b"}},
        {"type": "message", "id": "msg_1", "content": []},
    ], "usage": {"input_tokens": 10, "output_tokens": 5, "cost": 0.001, "is_byok": True,
                 "cost_details": {"upstream_inference_cost": 0.02}}})
    assert usage.web_search_requests == 2
    assert usage.is_byok is True and usage.upstream_cost == Decimal("0.02")


def test_messages_iterations_without_cache_counts_keep_the_top_level_ones() -> None:
    usage = body("messages", {"type": "message", "usage": {
        "input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 900,
        "iterations": [{"type": "compaction", "input_tokens": 100, "output_tokens": 50},
                       {"type": "message", "input_tokens": 10, "output_tokens": 5}]}})
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens) == (1010, 900, 55)


@pytest.mark.parametrize(
    ("endpoint", "payload"),
    [
        ("chat/completions", {"service_tier": "flex", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
        ("responses", {"service_tier": "flex", "usage": {"input_tokens": 1, "output_tokens": 1}}),
        ("messages", {"type": "message", "usage": {"input_tokens": 1, "output_tokens": 1, "service_tier": "flex"}}),
    ],
)
def test_served_service_tier_is_read(endpoint: str, payload: dict[str, Any]) -> None:
    assert body(endpoint, payload).service_tier == "flex"
# ---- replies too big to parse whole (issue 11) ------------------------------------------------


def test_usage_at_the_end_of_a_reply_past_the_parse_limit_is_read() -> None:
    from proxy.usage import parser_for
    from proxy.usage._stream import MAX_BODY_BYTES

    head = b'{"id": "gen-big", "object": "list", "data": [{"embedding": ['
    tail = b'0.1]}], "model": "openai/text-embedding-3-small", "usage": {"prompt_tokens": 8, "total_tokens": 8, "cost": 0.25}}'
    filler = b"0.123456," * (1024 * 1024)
    parser = parser_for("embeddings", streamed=False)
    parser.feed(head)
    for _ in range(MAX_BODY_BYTES // len(filler) + 2):
        parser.feed(filler)
    parser.feed(tail[:7])
    parser.feed(tail[7:])
    usage = parser.finish()
    assert (usage.model, usage.generation_id, usage.input_tokens, usage.cost_reported) == (
        "openai/text-embedding-3-small", "gen-big", 8, Decimal("0.25"))


@pytest.mark.parametrize(
    ("tail", "usage"),
    [
        (b'..."content": "say \\"usage\\": {\\"cost\\": 9}"}], "usage": {"cost": 1}}', {"cost": 1}),
        (b'...], "usage": {"cost": 1, "x": {"y": [1, 2]}}}', {"cost": 1, "x": {"y": [1, 2]}}),
        (b'...], "usage": {"cost": 1', None),  # cut: nothing rather than a guess
        (b"...]}", None),
    ],
)
def test_ends_of_body(tail: bytes, usage: dict[str, object] | None) -> None:
    from proxy.usage._stream import ends_of_body

    assert ends_of_body(b'{"id": "gen-1"', tail).get("usage") == usage


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0), (1200, 1200), (100_000_000, 100_000_000), (100_000_001, None), (-1, None),
        (True, None), (False, None), (3.0, 3), (3.5, None), (-2.0, None), ("12", None), (None, None),
    ],
)
def test_count_takes_only_sane_whole_numbers(value: object, expected: int | None) -> None:
    from proxy.usage._values import count

    got = count(value)
    assert got == expected and type(got) is type(expected)
