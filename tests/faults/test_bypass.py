"""Budget bypasses (issue 11): crafted requests against a proxy whose block budgets are spent.

Every request is sent byte for byte over a raw socket, because an HTTP client would normalise the
very things under test (fragments, `//`, dot segments, percent-encoding, repeated headers). Each
must be refused with a 4xx in the envelope, or forwarded and counted; and the fake upstream's own
log of billed calls must always equal the proxy's rows of forwarded billed calls.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import zlib
from dataclasses import dataclass
from typing import Any

import pytest

from proxy.budgets.spec import parse_budgets
from proxy.config import KeyAlias
from proxy.store import records
from tests.fake_openrouter import BILLED, RECEIVED
from tests.faults.conftest import KEY

# Built from parts, like KEY, so nothing that looks like a real key is committed.
OTHER = "sk-or-v1-" + "fedcba9876543210" * 4
CLAUDE = "anthropic/claude-sonnet-4.5"
GPT = "openai/gpt-4o"
TINY = "0.000001"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def envelope(self) -> dict[str, Any]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        # OpenRouter's envelope, or Anthropic's on /messages.
        assert "error" in data, data
        return data


def _dechunk(body: bytes) -> bytes:
    parts, at = [], 0
    while at < len(body):
        end = body.index(b"\r\n", at)
        size = int(body[at:end].split(b";")[0], 16)
        if size == 0:
            break
        parts.append(body[end + 2 : end + 2 + size])
        at = end + 2 + size + 2
    return b"".join(parts)


async def raw(
    port: int,
    target: str,
    *,
    method: str = "POST",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    connection: str = "close",
) -> Reply:
    """One request exactly as written; the server closes the connection after its reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Connection: {connection}"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 60)
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    got = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        got[name.strip().lower()] = value.strip()
    if got.get("transfer-encoding", "").lower() == "chunked":
        payload = _dechunk(payload)
    return Reply(int(status_line.split()[1]), got, payload)


def bearer(key: str = KEY) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {key}"), ("Content-Type", "application/json")]


def chat(model: str = GPT, **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


def forwarded_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of billed calls that reached the upstream (a budget refusal is a row too, but unbilled)."""
    return [r for r in rows if r["outcome"] != records.BLOCKED]


def refused_or_counted(reply: Reply, what: str) -> None:
    if reply.status < 300:
        return  # counted: the invariant check at the end of each test proves the row exists
    assert 400 <= reply.status < 500, (what, reply.status, reply.body[:300])
    reply.envelope()


BUDGETS = [
    # Everything the victim key spends, by its alias: spent by the first request.
    {"name": "victim", "limit_usd": TINY, "period": "day", "scope": "total", "match": {"key": "victim"}, "action": "block"},
    # Every Claude call, by anyone.
    {"name": "claude", "limit_usd": TINY, "period": "day", "scope": "total", "match": {"model": "anthropic/*"}, "action": "block"},
]


@pytest.fixture
async def spent(start_proxy: Any, make_config: Any, upstream: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A proxy whose `victim` and `claude` budgets are spent, each by one real billed call."""
    monkeypatch.setenv("TEST_VICTIM_KEY", KEY)
    config = make_config(budgets=parse_budgets(BUDGETS), keys=(KeyAlias(alias="victim", key_env="TEST_VICTIM_KEY"),))
    proxy = await start_proxy(config)
    port = proxy.server.port
    assert (await raw(port, "/api/v1/chat/completions", headers=bearer(), body=chat())).status == 200
    assert (await raw(port, "/api/v1/chat/completions", headers=bearer(OTHER), body=chat(CLAUDE))).status == 200
    assert (await raw(port, "/api/v1/chat/completions", headers=bearer(), body=chat())).status == 402
    assert (await raw(port, "/api/v1/chat/completions", headers=bearer(OTHER), body=chat(CLAUDE))).status == 402
    return proxy, upstream


async def invariant(proxy: Any, upstream: Any) -> None:
    await proxy.settle()
    billed = upstream.app[BILLED]
    rows = forwarded_rows(proxy.rows())
    assert len(billed) == len(rows), (billed, [(r["endpoint"], r["status"], r["outcome"]) for r in rows])


# ---- 1 and 2: the target ----------------------------------------------------------------------

FRAGMENTS = [
    "/api/v1/chat/completions#x",
    "/v1/chat/completions#x",
    "/api/v1/messages#a",
    "/api/v1/chat/completions?x=1#y",
    "/api/v1/chat/completions#?x",
]
NON_CANONICAL = [
    "/api/v1/Chat/Completions",
    "/api/v1/chat//completions",
    "/api/v1/CHAT/COMPLETIONS/",
    "/api/v1/chat/completions/",
    "/api/v1//chat/completions",
    "/api/v1/chat/./completions",
    "/api/v1/x/../chat/completions",
    "/api/v1/chat/%63ompletions",
    "/api/v1/chat%2Fcompletions",
    "/api/v1/chat%2fcompletions%2F",
    "/api/v1/%43hat/completions",
    "/v1//Messages",
    "/v1/messages/",
    "/api/v1/Responses",
    "/api/v1/embeddings//",
    "/api/v1/chat/completions%23x",
    "/api/v1/chat/completions%3Fx",
    "/api/v1/chat/completions%00",
    "/api/v1/chat/completions;x",
    "/p/acme/api/v1/chat//completions",
]


@pytest.mark.parametrize("target", FRAGMENTS + NON_CANONICAL)
async def test_no_target_form_dodges_a_spent_budget(spent: Any, target: str) -> None:
    proxy, upstream = spent
    before = len(upstream.app[BILLED])
    reply = await raw(proxy.server.port, target, headers=bearer(), body=chat())
    assert reply.status != 200, (target, reply.body[:200])
    refused_or_counted(reply, target)
    assert len(upstream.app[BILLED]) == before
    await invariant(proxy, upstream)


@pytest.mark.parametrize(
    ("target", "upstream_path"),
    [
        ("/api/v1/Chat/Completions", "/api/v1/chat/completions"),
        ("/api/v1/chat//completions/", "/api/v1/chat/completions"),
        ("/v1/chat%2Fcompletions", "/api/v1/chat/completions"),
        ("/api/v1/%6Dessages", "/api/v1/messages"),
    ],
)
async def test_a_non_canonical_billed_path_is_forwarded_canonical_and_recorded(
    start_proxy: Any, upstream: Any, target: str, upstream_path: str
) -> None:
    proxy = await start_proxy()
    reply = await raw(proxy.server.port, target, headers=bearer(), body=chat())
    assert reply.status == 200, reply.body[:300]
    assert [r["path"] for r in upstream.app[RECEIVED]] == [upstream_path]
    await invariant(proxy, upstream)
    assert len(proxy.rows()) == 1


# ---- 3: the model --------------------------------------------------------------------------

def _gzip_bomb(inflated: int) -> bytes:
    """A small gzip body that inflates past the proxy's 64 MiB cap, built without holding it whole."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    spaces = b" " * (1024 * 1024)
    parts = [packer.compress(b"{")] + [packer.compress(spaces) for _ in range(inflated // len(spaces))]
    return b"".join(parts) + packer.compress(b"}") + packer.flush()


BOMB = _gzip_bomb(70 * 1024 * 1024)

MODEL_BODIES: list[tuple[str, list[tuple[str, str]], bytes, int]] = [
    ("duplicate model, decoy first", [], b'{"model": "openai/gpt-4o", "model": "' + CLAUDE.encode() + b'", "messages": []}', 400),
    ("duplicate model, decoy last", [], b'{"model": "' + CLAUDE.encode() + b'", "model": "openai/gpt-4o", "messages": []}', 400),
    ("nested model first", [], json.dumps({"metadata": {"model": GPT}, "model": CLAUDE, "messages": []}).encode(), 402),
    ("escaped key", [], b'{"m\\u006fdel": "' + CLAUDE.encode() + b'", "messages": []}', 402),
    ("escaped slash", [], b'{"model": "anthropic\\/claude-sonnet-4.5", "messages": []}', 402),
    ("escaped key and a decoy", [], b'{"model": "openai/gpt-4o", "m\\u006fdel": "' + CLAUDE.encode() + b'"}', 400),
    ("gzip body", [("Content-Encoding", "gzip")], gzip.compress(chat(CLAUDE)), 402),
    ("deflate body", [("Content-Encoding", "deflate")], zlib.compress(chat(CLAUDE)), 402),
    ("no model at all", [], b'{"messages": []}', 402),
    ("model is not a string", [], b'{"model": ["' + CLAUDE.encode() + b'"]}', 402),
    ("not JSON", [], b'{"model": "' + CLAUDE.encode() + b'", ', 402),
    # br and zstd have no decoder installed here: the model is unknown, so every model budget applies.
    ("unknown encoding", [("Content-Encoding", "x-secret")], chat(CLAUDE), 402),
    ("brotli", [("Content-Encoding", "br")], chat(CLAUDE), 402),
    ("gzip twice", [("Content-Encoding", "gzip, gzip")], gzip.compress(gzip.compress(chat(CLAUDE))), 402),
    ("gzip hidden by Connection", [("Content-Encoding", "gzip"), ("Connection", "content-encoding")], gzip.compress(chat(CLAUDE)), 402),
    ("corrupt gzip", [("Content-Encoding", "gzip")], b"\x1f\x8b not really", 402),
    ("fallback list", [], json.dumps({"model": GPT, "models": [GPT, CLAUDE], "messages": []}).encode(), 402),
    ("openrouter/auto", [], chat("openrouter/auto"), 402),
    ("decompression bomb", [("Content-Encoding", "gzip")], BOMB, 413),
]


@pytest.mark.parametrize(("what", "extra", "body", "status"), MODEL_BODIES, ids=[m[0] for m in MODEL_BODIES])
async def test_no_body_form_dodges_a_model_budget(spent: Any, what: str, extra: list[tuple[str, str]], body: bytes, status: int) -> None:
    proxy, upstream = spent
    reply = await raw(proxy.server.port, "/api/v1/chat/completions", headers=bearer(OTHER) + extra, body=body)
    assert reply.status == status, (what, reply.body[:300])
    reply.envelope()
    await invariant(proxy, upstream)


async def test_a_known_other_model_still_passes(spent: Any) -> None:
    proxy, upstream = spent
    reply = await raw(proxy.server.port, "/api/v1/chat/completions", headers=bearer(OTHER), body=chat(GPT))
    assert reply.status == 200
    await invariant(proxy, upstream)


async def test_the_model_that_served_is_charged(start_proxy: Any, make_config: Any, upstream: Any) -> None:
    """`openrouter/auto` (or a fallback list) may be served by Claude: Claude's budget pays for it."""
    budgets = parse_budgets([BUDGETS[1]])
    proxy = await start_proxy(make_config(budgets=budgets))
    port = proxy.server.port
    # The fake serves whatever `model` says; a body whose model is known but not Claude's is
    # admitted, and the reply names the model that served.
    served = await raw(port, "/api/v1/chat/completions", headers=bearer() + [("X-Fake-Serve", CLAUDE)], body=chat("openrouter/auto"))
    assert served.status == 200
    assert (await raw(port, "/api/v1/chat/completions", headers=bearer(), body=chat(CLAUDE))).status == 402
    await invariant(proxy, upstream)
    # A restart rebuilds the budget from the rows, and still counts the model that served.
    again = await start_proxy(make_config(budgets=budgets))
    assert (await raw(again.server.port, "/api/v1/chat/completions", headers=bearer(), body=chat(CLAUDE))).status == 402


async def test_the_model_that_served_is_charged_after_a_backfill(start_proxy: Any, make_config: Any, upstream: Any) -> None:
    """A stream without usage is priced later from /generation; the served model still pays."""
    proxy = await start_proxy(make_config(budgets=parse_budgets([BUDGETS[1]]), backfill_delays_s=(0.05, 0.1)))
    port = proxy.server.port
    headers = bearer() + [("X-Fake-Serve", CLAUDE), ("X-Fake", "no-usage")]
    assert (await raw(port, "/api/v1/chat/completions", headers=headers, body=chat(GPT, stream=True))).status == 200
    for _ in range(100):
        await proxy.settle()
        if [r["cost_source"] for r in proxy.rows()] == [records.COST_GENERATION]:
            break
        await asyncio.sleep(0.05)
    assert [r["cost_source"] for r in proxy.rows()] == [records.COST_GENERATION]
    assert (await raw(port, "/api/v1/chat/completions", headers=bearer(), body=chat(CLAUDE))).status == 402
    await invariant(proxy, upstream)


# ---- 4: the key ------------------------------------------------------------------------------

KEY_HEADERS: list[tuple[str, list[tuple[str, str]], str]] = [
    ("junk bearer, real x-api-key, Connection drops Authorization",
     [("Authorization", "Bearer junk"), ("x-api-key", KEY)], "close, authorization"),
    ("Connection drops x-api-key", [("Authorization", f"Bearer {KEY}"), ("x-api-key", KEY)], "close, X-Api-Key"),
    ("Connection names Host", [("Authorization", f"Bearer {KEY}")], "close, host"),
    ("two different credentials", [("Authorization", "Bearer junk"), ("x-api-key", KEY)], "close"),
    ("two Authorization headers", [("Authorization", "Bearer junk"), ("Authorization", f"Bearer {KEY}")], "close"),
    ("two x-api-key headers", [("x-api-key", "junk"), ("x-api-key", KEY)], "close"),
    ("non-bearer scheme and a key", [("Authorization", "Basic anVuaw=="), ("x-api-key", KEY)], "close"),
]


@pytest.mark.parametrize(("what", "headers", "connection"), KEY_HEADERS, ids=[k[0] for k in KEY_HEADERS])
async def test_no_header_form_dodges_a_key_budget(spent: Any, what: str, headers: list[tuple[str, str]], connection: str) -> None:
    proxy, upstream = spent
    reply = await raw(
        proxy.server.port, "/api/v1/chat/completions", headers=headers + [("Content-Type", "application/json")],
        body=chat(), connection=connection,
    )
    assert reply.status == 400, (what, reply.body[:300])
    reply.envelope()
    await invariant(proxy, upstream)


async def test_the_same_key_in_both_headers_is_one_credential(spent: Any) -> None:
    proxy, upstream = spent
    reply = await raw(proxy.server.port, "/api/v1/chat/completions", headers=bearer() + [("x-api-key", KEY)], body=chat())
    assert reply.status == 402  # the victim's spent budget, not a 400
    await invariant(proxy, upstream)


# ---- 5: huge replies ---------------------------------------------------------------------------


async def test_usage_at_the_end_of_a_huge_reply_is_charged(start_proxy: Any, make_config: Any, upstream: Any) -> None:
    budgets = parse_budgets([{"name": "all", "limit_usd": "0.0001", "period": "day", "scope": "total", "action": "block"}])
    proxy = await start_proxy(make_config(budgets=budgets))
    body = json.dumps({"model": "openai/text-embedding-3-small", "input": "hi"}).encode()
    huge = bearer() + [("X-Fake-Embedding-Bytes", str(70 * 1024 * 1024)), ("X-Fake-Cost", "0.001")]
    first = await raw(proxy.server.port, "/api/v1/embeddings", headers=huge, body=body)
    assert first.status == 200 and len(first.body) > 64 * 1024 * 1024
    await proxy.settle()
    assert [r["cost_usd"] for r in proxy.rows()] == ["0.001"]
    second = await raw(proxy.server.port, "/api/v1/embeddings", headers=huge, body=body)
    assert second.status == 402
    await invariant(proxy, upstream)


async def test_a_billed_reply_without_readable_usage_is_charged_an_estimate(start_proxy: Any, make_config: Any, upstream: Any) -> None:
    budgets = parse_budgets([{"name": "all", "limit_usd": "0.0001", "period": "day", "scope": "total", "action": "block"}])
    proxy = await start_proxy(make_config(budgets=budgets))
    body = json.dumps({"model": "openai/text-embedding-3-small", "input": "hi"}).encode()
    first = await raw(proxy.server.port, "/api/v1/embeddings", headers=bearer() + [("X-Fake", "no-usage")], body=body)
    assert first.status == 200
    await proxy.settle()
    (row,) = proxy.rows()
    assert row["cost_source"] == records.COST_ESTIMATED and float(row["cost_usd"]) > 0
    assert (await raw(proxy.server.port, "/api/v1/embeddings", headers=bearer(), body=body)).status == 402
    await invariant(proxy, upstream)


# ---- 6: managed mode -------------------------------------------------------------------------

MANAGED_KEY = "sk-or-v1-" + "9" * 64
PROXY_KEY = "spend-team-" + "c" * 24


@pytest.fixture
async def managed(start_proxy: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TEST_MANAGED_KEY", MANAGED_KEY)
    keys = (KeyAlias(alias="team", key_sha256=hashlib.sha256(PROXY_KEY.encode()).hexdigest()),)
    return await start_proxy(make_config(managed_key_env="TEST_MANAGED_KEY", keys=keys))


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/api/v1/key"), ("GET", "/api/v1/keys"), ("POST", "/api/v1/keys"), ("DELETE", "/api/v1/keys/abc"),
        ("PATCH", "/api/v1/keys/abc"), ("GET", "/api/v1/credits"), ("GET", "/api/v1/Key"), ("GET", "/api/v1/keys/"),
        ("GET", "/v1//credits"), ("GET", "/api/v1/%6Beys"), ("POST", "/api/v1/credits/coinbase"),
        ("GET", "/api/v1/generation?id=gen-someone-elses"), ("GET", "/api/v1/activity"), ("GET", "/api/v1/auth/keys"),
    ],
)
async def test_managed_mode_forwards_only_inference(managed: Any, upstream: Any, method: str, target: str) -> None:
    body = b'{"name": "x"}' if method in ("POST", "PATCH") else b""
    reply = await raw(managed.server.port, target, method=method, headers=bearer(PROXY_KEY), body=body)
    assert reply.status == 403, (target, reply.body[:200])
    assert "openrouter-spend" in reply.envelope()["error"]["message"]
    assert upstream.app[RECEIVED] == []


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
async def test_a_billed_endpoint_takes_post_only(spent: Any, method: str) -> None:
    """Only a POST is classified billed, so no other method (a GET with a body, say) goes up."""
    proxy, upstream = spent
    reply = await raw(proxy.server.port, "/api/v1/chat/completions", method=method, headers=bearer(), body=chat())
    assert reply.status == 405 and reply.headers["allow"] == "POST"
    reply.envelope()
    await invariant(proxy, upstream)


async def test_managed_mode_still_serves_inference_models_and_own_generations(managed: Any, upstream: Any) -> None:
    port = managed.server.port
    reply = await raw(port, "/api/v1/chat/completions", headers=bearer(PROXY_KEY), body=chat())
    assert reply.status == 200
    generation_id = json.loads(reply.body)["id"]
    assert (await raw(port, "/api/v1/models", method="GET", headers=bearer(PROXY_KEY))).status == 200
    assert (await raw(port, "/api/v1/models/openai/gpt-4o/endpoints", method="GET", headers=bearer(PROXY_KEY))).status == 200
    own = await raw(port, f"/api/v1/generation?id={generation_id}", method="GET", headers=bearer(PROXY_KEY))
    assert own.status == 200, own.body[:300]
    await invariant(managed, upstream)


# ---- all of it at once -----------------------------------------------------------------------


async def test_every_variant_at_once_upstream_bills_exactly_the_proxy_rows(spent: Any) -> None:
    proxy, upstream = spent
    port = proxy.server.port
    for target in FRAGMENTS + NON_CANONICAL:
        refused_or_counted(await raw(port, target, headers=bearer(), body=chat()), target)
    for what, extra, body, _ in MODEL_BODIES:
        refused_or_counted(await raw(port, "/api/v1/chat/completions", headers=bearer(OTHER) + extra, body=body), what)
    for what, headers, connection in KEY_HEADERS:
        reply = await raw(port, "/api/v1/chat/completions", headers=headers, body=chat(), connection=connection)
        refused_or_counted(reply, what)
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        refused_or_counted(await raw(port, "/api/v1/chat/completions", method=method, headers=bearer(), body=chat()), method)
    # Allowed traffic in between, so the count is not trivially "only the two seeds".
    for target in ("/api/v1/chat/completions", "/v1/Chat/Completions/", "/api/v1/embeddings"):
        assert (await raw(port, target, headers=bearer(OTHER), body=chat())).status == 200
    await invariant(proxy, upstream)
    assert len(upstream.app[BILLED]) == 5
