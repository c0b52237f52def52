"""What a request body asks for: its model, read by parsing the JSON, after undoing its encoding.

Inspection only: the bytes forwarded are always the client's own. A byte scan for `"model"` is
dodged by a duplicate key, a nested one, `m\\u006fdel` or a gzip'd body, so a budget that matches
on the model gets a real parse. A body whose model cannot be known says so (`known=False`), and
then counts against every model-matched budget.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

from proxy.server.attribution import clean
from proxy.server.routing import BadRequest

# Models chosen by the upstream, not the client: which one serves is not known before the reply.
_ROUTERS = ("openrouter/auto", "@preset/")


class DuplicateModel(BadRequest):
    pass


class InflatedTooLarge(ValueError):
    """The body decompresses past the cap: a decompression bomb, or just too big to inspect."""


@dataclass(frozen=True, slots=True)
class BodyModel:
    model: str | None
    known: bool


UNKNOWN = BodyModel(None, False)


# `"model"` as the first key, or as the last key of the outermost object (the document's final `}`).
_FIRST_KEY = re.compile(rb'\s*\{\s*"model"\s*:\s*"([^"\\]{1,200})"\s*[,}]')
_LAST_KEY = re.compile(rb'[{,]\s*"model"\s*:\s*"([^"\\]{1,200})"\s*\}\s*$')


def body_model(body: bytes, content_encoding: str | None, cap: int) -> BodyModel:
    """The model a JSON request body names, and whether that is the model the upstream will use.

    Raises DuplicateModel when the top-level object names `model` twice (parsers disagree on
    which one wins) and InflatedTooLarge when decoding the body would pass `cap` bytes.
    """
    try:
        plain = _decoded(body, content_encoding, cap)
    except zlib.error:
        return UNKNOWN  # the upstream cannot read it either; still, nothing here says which model
    if plain is None:
        return UNKNOWN
    # Two passes at ~1 GB/s: one count finds "model" and "models" alike, one an escaped d/e/l/m/o.
    # Inside a JSON string every quote is escaped, so these bytes there are never a key.
    plain_keys = b"\\u006" not in plain
    keys = plain.count(b'"model')
    if plain_keys and keys == 0:
        return UNKNOWN  # no model key at all: the upstream picks the account's default
    if plain_keys and keys == 1:
        return _at_an_end(plain) or _parsed(plain, hooked=False)
    return _parsed(plain, hooked=True)


def _at_an_end(plain: bytes) -> BodyModel | None:
    """The common shapes without a parse: the one plainly spelled `"model"`
    key is the document's first key or its outermost object's last key."""
    match = _FIRST_KEY.match(plain) or _LAST_KEY.search(plain, max(0, len(plain) - 512))
    if match is None:
        return None
    model = match.group(1).decode("utf-8", "replace")
    return BodyModel(clean(model, 200), not model.strip().lower().startswith(_ROUTERS))


def _parsed(plain: bytes, hooked: bool = True) -> BodyModel:
    """The parse (~5-10 ms per MB); the duplicate-key hook only when a duplicate is possible."""
    duplicate = _LastObject()
    try:
        data = json.loads(plain, object_pairs_hook=duplicate.hook if hooked else None)
    except (ValueError, RecursionError):
        return UNKNOWN
    if not isinstance(data, dict):
        return UNKNOWN
    if duplicate.seen:
        raise DuplicateModel("the request body names `model` more than once")
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        return UNKNOWN
    shown = clean(model, 200)
    fallbacks = data.get("models")
    routed = model.strip().lower().startswith(_ROUTERS)
    # A fallback list (`models`) lets the upstream serve another model than `model`.
    if routed or (isinstance(fallbacks, list) and any(m != model for m in fallbacks)):
        return BodyModel(shown, False)
    return BodyModel(shown, True)


class _LastObject:
    """object_pairs_hook: the outermost object closes last, so after loads() `seen` is about it."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = False

    def hook(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        self.seen = len(obj) != len(pairs) and sum(1 for k, _ in pairs if k == "model") > 1
        return obj


def _decoded(body: bytes, content_encoding: str | None, cap: int) -> bytes | None:
    """The body with its content codings undone (last applied first); None when one is unknown."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, 16 + zlib.MAX_WBITS, cap)
        elif coding == "deflate":
            # RFC 9110's deflate is zlib-wrapped; some clients send it raw.
            try:
                body = _inflate(body, zlib.MAX_WBITS, cap)
            except zlib.error:
                body = _inflate(body, -zlib.MAX_WBITS, cap)
        else:
            # br, zstd (no decoder installed) or anything else: the model cannot be read here.
            return None
    return body


def _inflate(data: bytes, wbits: int, cap: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(data, cap + 1)
    if len(out) > cap or inflater.unconsumed_tail:
        raise InflatedTooLarge(f"the request body decompresses to more than {cap} bytes")
    return out
