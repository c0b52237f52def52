"""Managed-key mode: the proxy holds the OpenRouter key; clients present proxy keys listed in config."""

from __future__ import annotations

import hashlib
from typing import Any

import aiohttp
import openai
import pytest

from proxy.config import KeyAlias, parse_config
from proxy.errors import ConfigError
from tests.fake_openrouter import RECEIVED

UPSTREAM_KEY = "sk-or-v1-" + "9" * 64
ALICE = "spend-alice-" + "a" * 24
BOB = "spend-bob-" + "b" * 24


@pytest.fixture
def managed(make_config: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TEST_OPENROUTER_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("TEST_PROXY_KEY_BOB", BOB)
    keys = (
        KeyAlias(alias="alice", key_sha256=hashlib.sha256(ALICE.encode()).hexdigest(), project="acme"),
        KeyAlias(alias="bob", key_env="TEST_PROXY_KEY_BOB"),
    )
    return make_config(managed_key_env="TEST_OPENROUTER_KEY", keys=keys)


async def test_proxy_keys_are_swapped_for_the_managed_key(start_proxy: Any, managed: Any, upstream: Any) -> None:
    proxy = await start_proxy(managed)
    async with openai.AsyncOpenAI(base_url=proxy.base, api_key=ALICE, max_retries=0) as client:
        await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}])
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.base}/messages", json={"model": "anthropic/claude-sonnet-4.5", "messages": []}, headers={"x-api-key": BOB}) as response:
            assert response.status == 200
    seen = upstream.app[RECEIVED]
    assert [r["headers"].get("Authorization") for r in seen] == [f"Bearer {UPSTREAM_KEY}"] * 2
    assert all("x-api-key" not in {k.lower() for k in r["headers"]} for r in seen)
    assert not any(ALICE in str(r["headers"]) or BOB in str(r["headers"]) for r in seen)
    await proxy.settle()
    rows = proxy.rows()
    assert [(r["key_alias"], r["project"]) for r in rows] == [("alice", "acme"), ("bob", None)]


async def test_unknown_proxy_key_gets_401_and_nothing_is_forwarded(start_proxy: Any, managed: Any, upstream: Any) -> None:
    proxy = await start_proxy(managed)
    async with openai.AsyncOpenAI(base_url=proxy.base, api_key="sk-or-v1-" + "1" * 64, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "proxy keys" in str(caught.value)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.base}/messages", json={}) as response:
            assert response.status == 401
            assert (await response.json())["type"] == "error"  # Anthropic's envelope on /messages
    assert upstream.app[RECEIVED] == []


def test_managed_mode_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    # Managed mode without `keys:` is fine now: proxy keys can be made at runtime (`keys create`).
    assert parse_config({"managed_key_env": "X"}).keys == ()
    with pytest.raises(ConfigError, match=r"^keys\[0\]\.key_sha256: expected 64 lowercase hex digits"):
        parse_config({"keys": [{"alias": "a", "key_sha256": "abc"}]})
    from proxy.server.app import create_app

    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    config = parse_config({"managed_key_env": "NOT_SET_ANYWHERE", "keys": [{"alias": "a", "key_sha256": "0" * 64}]})
    with pytest.raises(ConfigError, match="^managed_key_env: environment variable NOT_SET_ANYWHERE is not set"):
        create_app(config)


async def test_managed_key_project_budget_cannot_be_dodged_by_header_or_path(
    start_proxy: Any, managed: Any, upstream: Any
) -> None:
    import dataclasses

    from proxy.budgets.spec import parse_budgets

    budgets = parse_budgets([{"name": "acme", "limit_usd": "0.001", "scope": "project", "match": {"project": "acme"}}])
    proxy = await start_proxy(dataclasses.replace(managed, budgets=budgets))
    chat = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {ALICE}", "X-Fake-Cost": "0.002"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.base}/chat/completions", json=chat, headers=headers) as response:
            assert response.status == 200
        root = str(proxy.server.make_url(""))
        for url, extra in (
            (f"{proxy.base}/chat/completions", {"X-Spend-Project": "elsewhere"}),
            (f"{root}/p/elsewhere/api/v1/chat/completions", {}),
        ):
            async with session.post(url, json=chat, headers={**headers, **extra}) as response:
                assert response.status == 402, url
    assert len(upstream.app[RECEIVED]) == 1
    await proxy.settle()
    assert {r["project"] for r in proxy.rows()} == {"acme"}
