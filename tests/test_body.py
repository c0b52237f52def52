"""The model a request body names, by parsing: duplicates, escapes, nesting, encodings and bombs."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from proxy.server.body import BodyModel, DuplicateModel, InflatedTooLarge, body_model

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
        (b'{"model": "a/b", ', None, BodyModel(None, False)),
        (b'["model", "a/b"]', None, BodyModel(None, False)),
        (b"", None, BodyModel(None, False)),
        (b'{"model": "a/b"}', "br", BodyModel(None, False)),
        (b'{"model": "a/b"}', "zstd", BodyModel(None, False)),
        (b"\x1f\x8b junk", "gzip", BodyModel(None, False)),
        (b"[" * 100_000, None, BodyModel(None, False)),
        # Known by name, but the upstream picks what serves.
        (b'{"model": "openrouter/auto"}', None, BodyModel("openrouter/auto", False)),
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
