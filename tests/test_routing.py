"""Routing: our path forms to the upstream URL (never another host), header hygiene, the requested model."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.server.routing import BadPath, BadRequest, check_connection, client_headers, managed_allows, requested_model, resolve, upstream_headers

UP = "https://openrouter.ai/api/v1"


@pytest.mark.parametrize(
    ("raw_path", "query", "project", "endpoint", "url"),
    [
        ("/api/v1/chat/completions", "", None, "chat/completions", f"{UP}/chat/completions"),
        ("/v1/chat/completions", "", None, "chat/completions", f"{UP}/chat/completions"),
        ("/v1/messages", "beta=true", None, "messages", f"{UP}/messages?beta=true"),
        ("/api/v1/models/openai/gpt-4o/endpoints", "", None, "models/openai/gpt-4o/endpoints",
         f"{UP}/models/openai/gpt-4o/endpoints"),
        ("/p/acme/api/v1/responses", "", "acme", "responses", f"{UP}/responses"),
        ("/p/acme/v1/messages", "", "acme", "messages", f"{UP}/messages"),
        ("/p/my%20proj/api/v1/responses", "", "my_proj", "responses", f"{UP}/responses"),
        ("/p/a%0Ab/api/v1/responses", "", "a_b", "responses", f"{UP}/responses"),
        ("/api/v1/generation", "id=gen-1", None, "generation", f"{UP}/generation?id=gen-1"),
        # The query is passed on exactly as given (still percent-encoded).
        ("/api/v1/models", "a=%26b%3Dc&s=%2F%20+z", None, "models", f"{UP}/models?a=%26b%3Dc&s=%2F%20+z"),
        # The path is decoded and canonicalised, and exactly the canonical path goes up (issue 11):
        # never one string classified and another forwarded.
        ("/api/v1/chat%2Fcompletions", "", None, "chat/completions", f"{UP}/chat/completions"),
        ("/api/v1/Chat//Completions/", "", None, "chat/completions", f"{UP}/chat/completions"),
        ("/api/v1/%4Dodels/Openai/GPT-4o", "", None, "Models/Openai/GPT-4o", f"{UP}/Models/Openai/GPT-4o"),
        # Absolute-URI-looking paths are just path segments under the upstream base.
        ("/api/v1/http://evil.example/x", "", None, "http:/evil.example/x", f"{UP}/http:/evil.example/x"),
        ("/api/v1//evil.example/x", "", None, "evil.example/x", f"{UP}/evil.example/x"),
        ("/api/v1/@evil.example", "", None, "@evil.example", f"{UP}/@evil.example"),
        ("/api/v1/x", "next=http://evil.example/", None, "x", f"{UP}/x?next=http://evil.example/"),
    ],
)
def test_resolve(raw_path: str, query: str, project: str | None, endpoint: str, url: str) -> None:
    route = resolve(raw_path, query, UP)
    assert route is not None
    assert route.project == project
    assert route.endpoint == endpoint
    assert str(route.upstream_url) == url
    assert route.upstream_url.host == "openrouter.ai"
    assert route.upstream_url.scheme == "https"


@pytest.mark.parametrize(
    "raw_path",
    [
        "/api/v1/../../admin",
        "/api/v1/chat/../../x",
        "/api/v1/%2e%2e/x",
        "/api/v1/%2E%2E/x",
        "/api/v1/.%2e/x",
        "/api/v1/..%2fx",
        "/api/v1/..%2Fx",
        "/api/v1/..%5cx",
        "/api/v1/..\\x",
        "/api/v1/./models",
        "/api/v1/..",
        "/p/acme/api/v1/%2e%2e/%2e%2e/x",
        # A double-encoded dot-dot: '%' after decoding is refused, so no upstream decodes it again.
        "/api/v1/%252e%252e/key",
        # Fragments never reach a server: the upstream would see a path we did not classify.
        "/api/v1/chat/completions#x",
        # Characters an upstream might trim or strip (path parameters) before routing.
        "/api/v1/chat/completions;x",
        "/api/v1/chat/completions%20",
        "/api/v1/chat/completions%3Fx",
        "/api/v1/chat/completions%00",
        "/api/v1/chat/compl%C3%A9tions",
        "/api/v1/chat/%ff",
    ],
)
def test_dot_segments_fragments_and_odd_characters_are_rejected(raw_path: str) -> None:
    with pytest.raises(BadPath):
        resolve(raw_path, "", UP)


@pytest.mark.parametrize(
    "raw_path",
    ["/", "/health", "/api/v2/chat", "/api/v1", "/apiv1/x", "/p/acme/other", "/p//api/v1/x", "http://evil/api/v1/x"],
)
def test_paths_that_are_not_ours(raw_path: str) -> None:
    assert resolve(raw_path, "", UP) is None


@pytest.mark.parametrize(
    "raw_path",
    ["/api/v1/x", "/api/v1//h.example", "/api/v1/:443@h.example", "/api/v1/\\\\h.example", "/v1/%40h.example",
     "/api/v1/x#@h.example", "/p/h.example:80/api/v1/x"],
)
@pytest.mark.parametrize("upstream", [UP, "http://127.0.0.1:9999", "http://127.0.0.1:9999/api/v1/"[:-1]])
def test_upstream_host_never_changes(raw_path: str, upstream: str) -> None:
    from yarl import URL

    base = URL(upstream)
    try:
        route = resolve(raw_path, "q=@h.example", upstream)
    except BadPath:
        return
    assert route is not None
    assert (route.upstream_url.scheme, route.upstream_url.host, route.upstream_url.port) == (
        base.scheme, base.host, base.port)
    assert str(route.upstream_url).startswith(upstream + "/")


# ---- headers ---------------------------------------------------------------------------------


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_upstream_headers_drop_hop_by_hop_and_keep_end_to_end() -> None:
    sent = upstream_headers(
        _headers(
            ("Host", "127.0.0.1:8787"),
            ("Connection", "keep-alive, X-Private-Hop"),
            ("X-Private-Hop", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic abc"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("Content-Length", "12"),
            ("Accept-Encoding", "gzip, br, zstd"),
            ("X-Spend-Project", "acme"),
            ("X-Spend-Session", "s1"),
            ("Authorization", "Bearer sk-or-v1-abc"),
            ("x-api-key", "sk-or-v1-abc"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "prompt-caching-2024-07-31"),
            ("HTTP-Referer", "https://example.com"),
            ("X-Title", "MyAgent"),
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("X-Custom", "1"),
            ("X-Custom", "2"),
        )
    )
    assert {name: sent[name] for name in sent} == {
        "Authorization": "Bearer sk-or-v1-abc",
        "x-api-key": "sk-or-v1-abc",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "prompt-caching-2024-07-31",
        "HTTP-Referer": "https://example.com",
        "X-Title": "MyAgent",
        "Content-Type": "application/json",
        # A compressed request body passes through, so its encoding header must too.
        "Content-Encoding": "gzip",
        "X-Custom": "1",
        "Accept-Encoding": "identity",
    }
    assert sent.getall("X-Custom") == ["1", "2"]
    assert sent.getall("Accept-Encoding") == ["identity"]


def test_accept_encoding_is_identity_even_when_absent() -> None:
    assert upstream_headers(_headers(("Accept", "*/*")))["Accept-Encoding"] == "identity"


def test_any_x_spend_header_is_ours_and_stays_here() -> None:
    sent = upstream_headers(_headers(("X-Spend-Budget", "team"), ("x-spend-anything", "v"), ("X-Spendthrift", "kept")))
    assert "X-Spend-Budget" not in sent and "x-spend-anything" not in sent
    assert sent["X-Spendthrift"] == "kept"


def test_every_connection_header_is_honoured() -> None:
    sent = upstream_headers(_headers(("Connection", "keep-alive"), ("Connection", "X-Hop"), ("X-Hop", "1")))
    assert "X-Hop" not in sent


@pytest.mark.parametrize("connection", ["authorization", "close, X-Api-Key", "Host", "keep-alive,authorization "])
def test_connection_may_not_name_the_credential_or_host(connection: str) -> None:
    # Dropping the credential we attributed while another crosses would bill a key no budget saw.
    with pytest.raises(BadRequest):
        check_connection(_headers(("Connection", "keep-alive"), ("Connection", connection)))


def test_connection_may_name_other_headers() -> None:
    check_connection(_headers(("Connection", "keep-alive, X-Hop")))


def test_client_headers_drop_hop_by_hop_and_stale_encoding() -> None:
    got = client_headers(
        _headers(
            ("Content-Type", "text/event-stream"),
            ("Content-Encoding", "gzip"),
            ("Content-Length", "100"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close, X-Hop"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("X-Generation-Id", "gen-1"),
            ("Retry-After", "7"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        )
    )
    assert list(got.items()) == [
        ("Content-Type", "text/event-stream"),
        ("X-Generation-Id", "gen-1"),
        ("Retry-After", "7"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


# ---- the requested model ---------------------------------------------------------------------

BIG = [{"role": "user", "content": "x" * 200_000}] * 20  # ~4 MB of messages


@pytest.mark.parametrize(
    ("body", "model"),
    [
        (json.dumps({"model": "openai/gpt-4o", "messages": BIG}).encode(), "openai/gpt-4o"),
        (json.dumps({"messages": BIG, "model": "anthropic/claude-sonnet-4.5"}).encode(), "anthropic/claude-sonnet-4.5"),
        (b'{ "model" :\n "a/b" }', "a/b"),
        (json.dumps({"messages": [{"role": "user", "content": 'use "model": "evil/one" please'}],
                     "model": "good/one"}).encode(), "good/one"),
        (json.dumps({"tools": [{"parameters": {"properties": {"model": {"type": "string"}}}}],
                     "model": "good/two"}).encode(), "good/two"),
        (json.dumps({"messages": [{"content": "model"}], "model": "good/three"}).encode(), "good/three"),
        (b'{"model": "bad\nline"}', "bad_line"),
        (b'{"model": "' + b"m" * 150 + b'"}', "m" * 150),
        (b'{"model": "' + b"m" * 5000 + b'", "model": "x"}', "x"),
        (b'{"messages": []}', None),
        (b"", None),
        (b"\xff\xfe garbage", None),
        (b'{"model": 5}', None),
        (b'{"model": ""}', None),
        (b'{"model": "a\\"b"}', None),
    ],
)
def test_requested_model(body: bytes, model: str | None) -> None:
    assert requested_model(body) == model


# ---- end to end: what reaches the upstream ---------------------------------------------------


@pytest.fixture
async def recording_upstream(aiohttp_server: Any) -> tuple[Any, list[tuple[str, str, dict[str, str]]]]:
    seen: list[tuple[str, str, dict[str, str]]] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append((request.host, request.raw_path, dict(request.headers)))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    return await aiohttp_server(app), seen


async def test_hostile_paths_reach_only_the_upstream(
    recording_upstream: tuple[Any, list[tuple[str, str, dict[str, str]]]],
    start_proxy: Callable[..., Any],
    make_config: Callable[..., Any],
) -> None:
    server, seen = recording_upstream
    proxy = await start_proxy(make_config(upstream=str(server.make_url("/api/v1"))))
    client = proxy.client
    for path in ["/api/v1/%2e%2e/%2e%2e/etc/passwd", "/api/v1/../x", "/api/v1/..%2fadmin"]:
        response = await client.get(path)
        assert response.status in (400, 404), path
    for path in ["/api/v1//evil.example/x", "/api/v1/http://evil.example/"]:
        response = await client.get(path, headers={"Host": "evil.example"})
        assert response.status == 200
    assert [raw for _, raw, _ in seen] == ["/api/v1/evil.example/x", "/api/v1/http:/evil.example"]
    assert {host.split(":")[0] for host, _, _ in seen} == {"127.0.0.1"}
    assert all("X-Spend-Session" not in headers for _, _, headers in seen)


async def test_query_string_reaches_the_upstream_raw(
    recording_upstream: tuple[Any, list[tuple[str, str, dict[str, str]]]],
    start_proxy: Callable[..., Any],
    make_config: Callable[..., Any],
) -> None:
    server, seen = recording_upstream
    proxy = await start_proxy(make_config(upstream=str(server.make_url("/api/v1"))))
    # The test client would normalise `%2F` in a path string, so send an already-encoded URL.
    async with aiohttp.ClientSession() as session:
        for query in ["beta=true", "a=%26b%3Dc", "x=%25", "s=%2F%20+z"]:
            url = URL(str(proxy.server.make_url("/api/v1/models")) + "?" + query, encoded=True)
            async with session.get(url) as response:
                assert response.status == 200, query
            assert seen[-1][1] == "/api/v1/models?" + query


@pytest.mark.parametrize(
    ("method", "endpoint", "allowed"),
    [
        ("POST", "chat/completions", True),
        ("POST", "messages", True),
        ("POST", "messages/count_tokens", True),
        ("POST", "embeddings", True),
        ("GET", "models", True),
        ("GET", "models/openai/gpt-4o/endpoints", True),
        ("GET", "generation", True),  # and then only for the caller's own ids
        ("GET", "chat/completions", False),
        ("GET", "key", False),
        ("GET", "keys", False),
        ("POST", "keys", False),
        ("DELETE", "keys/abc", False),
        ("GET", "credits", False),
        ("POST", "credits/coinbase", False),
        ("GET", "activity", False),
        ("POST", "models", False),
        ("GET", "modelsx", False),
    ],
)
def test_managed_mode_allow_list(method: str, endpoint: str, allowed: bool) -> None:
    assert managed_allows(method, endpoint) is allowed
