"""The model a request body names, by parsing: duplicates, escapes, nesting, encodings and bombs."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.server.body import BodyModel, DuplicateModel, InflatedTooLarge, _parsed, body_model

CLAUDE = "anthropic/claude-sonnet-4.5"
CAP = 1024 * 1024


@pytest.mark.parametrize(
    ("body", "encoding", "expected"),
    [
        (json.dumps({"model": CLAUDE, "messages": []}).encode(), None, BodyModel(CLAUDE, True)),
        (json.dumps({"metadata": {"model": "openai/gpt-4o"}, "model": CLAUDE}).encode(), None, BodyModel(CLAUDE, True)),
        (b'{"m\\u006fdel": "anthropic/claude-sonnet-4.5"}', None, BodyModel(CLAUDE, True)),
        (b'{"model": "anthropic\\/claude-sonnet-4.5"}', "", BodyModel(CLAUDE, True)),
        (gzip.compress(b'{"model": "a/b"}'), "gzip", BodyModel("a/b", True)),
        (gzip.compress(b'{"model": "a/b"}'), "x-gzip", BodyModel("a/b", True)),
        (zlib.compress(b'{"model": "a/b"}'), "deflate", BodyModel("a/b", True)),
        (zlib.compress(b'{"model": "a/b"}')[2:-4], "Deflate", BodyModel("a/b", True)),  # raw deflate
        (gzip.compress(zlib.compress(b'{"model": "a/b"}')), "deflate, gzip", BodyModel("a/b", True)),
        (b'{"model": "a/b"}', "identity", BodyModel("a/b", True)),
        (b'{"model": "bad\\nline"}', None, BodyModel("bad_line", True)),
        # Unknown: no model, not a string, not JSON, not an object, an encoding we cannot undo.
        (b'{"messages": []}', None, BodyModel(None, False)),
        (b'{"model": ""}', None, BodyModel(None, False)),
        (b'{"model": ["a/b"]}', None, BodyModel(None, False)),
        # Cut JSON the upstream refuses anyway; the no-parse shortcut still names what it says.
        (b'{"model": "a/b", ', None, BodyModel("a/b", True)),
        (b'{"messages": [], "model": "a/b", ', None, BodyModel(None, False)),
        (b'["model", "a/b"]', None, BodyModel(None, False)),
        (b"", None, BodyModel(None, False)),
        (b'{"model": "a/b"}', "br", BodyModel(None, False)),
        (b'{"model": "a/b"}', "zstd", BodyModel(None, False)),
        (b"\x1f\x8b junk", "gzip", BodyModel(None, False)),
        (b"[" * 100_000, None, BodyModel(None, False)),
        # Known by name, but the upstream picks what serves.
        (b'{"model": "openrouter/auto"}', None, BodyModel("openrouter/auto", False)),
        (b'{"messages": [], "model": "@preset/team"}', None, BodyModel("@preset/team", False)),
        # A nested decoy and no top-level model: the upstream uses the account's default.
        (b'{"messages": [], "metadata": {"model": "a/b"}}', None, BodyModel(None, False)),
        (b'{"metadata": {"model": "a/b"}, "messages": []}', None, BodyModel(None, False)),
        (json.dumps({"model": "a/b", "models": ["a/b", CLAUDE]}).encode(), None, BodyModel("a/b", False)),
        (json.dumps({"model": "a/b", "models": ["a/b"]}).encode(), None, BodyModel("a/b", True)),
    ],
)
def test_body_model(body: bytes, encoding: str | None, expected: BodyModel) -> None:
    assert body_model(body, encoding, CAP) == expected


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "openai/gpt-4o", "model": "anthropic/claude-sonnet-4.5"}',
        b'{"model": "anthropic/claude-sonnet-4.5", "model": "openai/gpt-4o"}',
        b'{"model": "a/b", "m\\u006fdel": "c/d"}',
        b'{"model": "a/b", "x": {"y": 1}, "model": "a/b"}',
    ],
)
def test_a_duplicate_model_key_is_refused(body: bytes) -> None:
    # Parsers disagree on which duplicate wins; ours and the upstream's must not.
    with pytest.raises(DuplicateModel):
        body_model(body, None, CAP)


def test_nested_duplicates_are_not_the_model() -> None:
    assert body_model(b'{"metadata": {"model": "x", "model": "y"}, "model": "a/b"}', None, CAP) == BodyModel("a/b", True)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_decompression_bomb_stops_at_the_cap(encoding: str) -> None:
    plain = b'{"model": "a/b", "pad": "' + b" " * (CAP * 50) + b'"}'
    bomb = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    assert len(bomb) < CAP // 10
    with pytest.raises(InflatedTooLarge):
        body_model(bomb, encoding, CAP)


_KEYS = st.sampled_from(["model", "messages", "metadata", "x"])
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["a/b", "anthropic/claude", '"model": "c/d"']),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    pairs = draw(st.lists(st.tuples(_KEYS, _VALUES), max_size=4))
    if draw(st.booleans()):  # a top-level string model, first or last: the shortcut's own shapes
        pair = ("model", draw(st.sampled_from(["a/b", "anthropic/claude", "openrouter/auto", ""])))
        pairs = [pair, *pairs] if draw(st.booleans()) else [*pairs, pair]
    parts = [json.dumps(k) + ": " + json.dumps(v) for k, v in pairs]
    body = ("{" + ", ".join(parts) + "}").encode()
    if draw(st.booleans()):
        body = body.replace(b'"model"', rb'"m\u006fdel"', 1)  # the key spelled with an escape
    return body


@settings(max_examples=400)
@given(_bodies())
@example(b'{"metadata": {"model": "a/b"}}')
@example(b'{"x": [{"model": "a/b"}]}')
@example(b'{"x": {"y": 1, "model": "a/b"}}')
@example(b'[{"model": "a/b"}]')
@example(b'{"model": "a/b", "models": ["c/d"]}')
def test_the_shortcuts_agree_with_the_parse(body: bytes) -> None:
    """Whatever body_model answers without parsing, the full parse (duplicate hook on) agrees."""
    try:
        parsed = _parsed(body, hooked=True)
    except DuplicateModel:
        with pytest.raises(DuplicateModel):
            body_model(body, None, CAP)
        return
    assert body_model(body, None, CAP) == parsed, body
