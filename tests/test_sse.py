"""SseSplitter: every fixture at every split point, the line forms of the SSE spec, bounded memory, fuzzing."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.usage.sse import MAX_LINE_BYTES, SseSplitter

SSE_DIR = Path(__file__).parent / "fixtures" / "sse"
FIXTURES = sorted(SSE_DIR.glob("*.txt"))


def split_all(chunks: list[bytes]) -> list[bytes]:
    splitter = SseSplitter()
    out: list[bytes] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return out + splitter.finish()


def whole(data: bytes) -> list[bytes]:
    return split_all([data])


def test_fixtures_exist() -> None:
    names = {path.name for path in FIXTURES}
    assert {"chat_usage.txt", "chat_crlf.txt", "chat_error.txt", "messages_cache.txt",
            "responses_completed.txt", "responses_failed.txt"} <= names


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fixture_payloads_are_whole_json_events(path: Path) -> None:
    payloads = whole(path.read_bytes())
    assert payloads
    for payload in payloads:
        assert b"\r" not in payload
        assert payload == b"[DONE]" or isinstance(json.loads(payload), dict)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fixture_split_at_every_offset(path: Path) -> None:
    data = path.read_bytes()
    expected = whole(data)
    for offset in range(len(data) + 1):
        assert split_all([data[:offset], data[offset:]]) == expected, offset


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fixture_fed_one_byte_at_a_time(path: Path) -> None:
    data = path.read_bytes()
    assert split_all([data[i : i + 1] for i in range(len(data))]) == whole(data)


def test_crlf_fixture_equals_its_lf_twin() -> None:
    data = (SSE_DIR / "chat_crlf.txt").read_bytes()
    assert b"\r\n" in data
    assert whole(data) == whole(data.replace(b"\r\n", b"\n"))


def test_multi_line_data_is_joined_with_newline() -> None:
    data = (SSE_DIR / "chat_crlf.txt").read_bytes()
    payloads = whole(data)
    usage = [p for p in payloads if b'"usage"' in p]
    assert len(usage) == 1
    assert b'"choices":[],\n"usage"' in usage[0]
    assert json.loads(usage[0])["usage"]["prompt_tokens"] == 812


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: a\n\n", [b"a"]),
        (b"data:a\n\n", [b"a"]),  # the space after the colon is optional
        (b"data:  a\n\n", [b" a"]),  # only one space is removed
        (b"data: a\r\n\r\n", [b"a"]),
        (b"data: a\ndata: b\n\n", [b"a\nb"]),
        (b": comment\n\n", []),
        (b": comment\ndata: a\n\n", [b"a"]),
        (b"event: x\nid: 7\nretry: 10\ndata: a\n\n", [b"a"]),
        (b"event: only\n\n", []),
        (b"\n\n\n", []),
        (b"data: a\n\ndata: b\n\n", [b"a", b"b"]),
        (b"data: a", [b"a"]),  # final event without any newline
        (b"data: a\n", [b"a"]),  # final event without the blank line
        (b"data: a\r", [b"a"]),
        (b"datax: a\n\n", []),
        (b"Data: a\n\n", []),
        (b"data: [DONE]\n\n", [b"[DONE]"]),
        (b"", []),
    ],
)
def test_line_forms(stream: bytes, expected: list[bytes]) -> None:
    assert whole(stream) == expected
    assert split_all([stream[i : i + 1] for i in range(len(stream))]) == expected


def test_feed_returns_events_as_soon_as_they_complete() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b"data: one\n") == []
    assert splitter.feed(b"\ndata: tw") == [b"one"]
    assert splitter.feed(b"o\n\n") == [b"two"]
    assert splitter.finish() == []


def test_over_long_line_is_dropped_and_the_stream_continues() -> None:
    splitter = SseSplitter()
    out = splitter.feed(b"data: " + b"x" * (MAX_LINE_BYTES + 10))
    for _ in range(3):
        out += splitter.feed(b"y" * 1_000_000)
    out += splitter.feed(b"\n\ndata: after\n\n")
    out += splitter.finish()
    assert out == [b"after"]


def test_over_long_line_keeps_memory_bounded() -> None:
    splitter = SseSplitter()
    chunk = b"z" * (1 << 20)
    tracemalloc.start()
    try:
        splitter.feed(b"data: ")
        for _ in range(40):  # 40 MiB of one line
            splitter.feed(chunk)
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current < 2 * MAX_LINE_BYTES
    assert splitter.feed(b"\n\ndata: ok\n\n") == [b"ok"]


def test_many_data_lines_without_a_blank_line_keep_memory_bounded() -> None:
    # A hostile upstream that never ends its event must not grow one payload without limit.
    splitter = SseSplitter()
    line = b"data: " + b"q" * 1000 + b"\n"
    chunk = line * 1000  # ~1 MB per feed
    tracemalloc.start()
    try:
        for _ in range(40):
            splitter.feed(chunk)
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current < 2 * MAX_LINE_BYTES
    assert splitter.feed(b"\ndata: ok\n\n") == [b"ok"]


# ---- fuzzing -------------------------------------------------------------------------------


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    pieces, last = [], 0
    for cut in cuts:
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    return pieces


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.data())
def test_random_bytes_random_splits_never_raise_and_agree(data: bytes, draw: st.DataObject) -> None:
    pieces = draw.draw(splits(data))
    assert split_all(pieces) == whole(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FIXTURES), st.data())
def test_fixtures_random_splits(path: Path, draw: st.DataObject) -> None:
    data = path.read_bytes()
    assert split_all(draw.draw(splits(data))) == whole(data)


def test_long_line_in_small_chunks_costs_linear_time() -> None:
    # A big response.completed event arrives in many small TCP reads; re-joining the partial
    # line on every read would block the event loop for seconds.

    data = b"data: " + b"x" * (2 << 20) + b"\n\n"
    splitter = SseSplitter()
    began = time.perf_counter()
    out: list[bytes] = []
    for i in range(0, len(data), 128):
        out += splitter.feed(data[i : i + 128])
    assert time.perf_counter() - began < 0.5
    assert out == [b"x" * (2 << 20)]


def _line_by_line(chunks: list[bytes]) -> list[bytes]:
    # Each chunk cut after its first byte never takes the one-whole-event shortcut in feed().
    return split_all([piece for chunk in chunks for piece in (chunk[:1], chunk[1:]) if piece])


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fixture_fed_one_event_at_a_time(path: Path) -> None:
    data = path.read_bytes()
    events = [piece + b"\n\n" for piece in data.split(b"\n\n")[:-1]] + [data.rpartition(b"\n\n")[2]]
    assert split_all(events) == whole(data) == _line_by_line(events)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([
    b"data: {}\n\n", b"data: \n\n", b"data:  x\n\n", b"data:x\n\n", b"data: a\r\n\n", b"data: a\rb\n\n",
    b"data: a\ndata: b\n\n", b": comment\n\n", b"event: e\n", b"data: part", b"ial\n\n", b"\n", b"data: ",
    b"data: " + b"x" * (MAX_LINE_BYTES - 1) + b"\n\n", b"data: " + b"x" * MAX_LINE_BYTES + b"\n\n",
]), max_size=12))
def test_whole_event_chunks_agree_with_the_line_by_line_path(chunks: list[bytes]) -> None:
    assert split_all(chunks) == _line_by_line(chunks)
