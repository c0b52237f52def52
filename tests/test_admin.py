"""The /-/admin/ API: off by default (404), never answered without its token, and its changes apply at once."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from datetime import UTC, datetime
from typing import Any

import openai
import pytest

from proxy.config import AdminConfig, parse_config
from proxy.errors import ConfigError
from proxy.server.app import RUNTIME
from proxy.store import keys as key_store
from proxy.store.reader import open_reader
from tests.fake_openrouter import RECEIVED

UPSTREAM_KEY = "sk-or-v1-" + "6" * 64
ADMIN_TOKEN = "admin-" + "t0k3n" * 6
CHAT: dict[str, Any] = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def admin_config(make_config: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TEST_UPSTREAM", UPSTREAM_KEY)
    monkeypatch.setenv("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
    return make_config(managed_key_env="TEST_UPSTREAM", admin=AdminConfig(token_env="TEST_ADMIN_TOKEN"))


def auth(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(proxy: Any, key: str, cost: str = "0.001") -> int:
    async with openai.AsyncOpenAI(base_url=proxy.base, api_key=key, max_retries=0) as client:
        try:
            await client.chat.completions.create(**CHAT, extra_headers={"X-Fake-Cost": cost})
        except openai.APIStatusError as exc:
            return exc.status_code
    return 200


@pytest.mark.parametrize("ui", [True, False])
async def test_admin_api_is_off_by_default(start_proxy: Any, make_config: Any, upstream: Any, ui: bool) -> None:
    # With the page on, /-/* is its; with it off, the catch-all. Either way /-/admin/ is the admin API's: 404, never forwarded.
    proxy = await start_proxy(make_config(ui=dataclasses.replace(make_config().ui, enabled=ui)))
    for method in ("GET", "POST", "PUT"):
        response = await proxy.client.request(method, "/-/admin/keys", headers=auth(), json={"name": "x"})
        assert response.status == 404, method
        assert "admin.token_env" in (await response.json())["error"]["message"]
    assert (await proxy.client.delete("/-/admin/budgets/x", headers=auth())).status == 404
    assert upstream.app[RECEIVED] == []


async def test_admin_paths_are_not_the_pages(start_proxy: Any, admin_config: Any, upstream: Any) -> None:
    """The page's /-/{tail} route must not answer for /-/admin/: a wrong method or path gets the admin's answer."""
    proxy = await start_proxy(admin_config)
    wrong = await proxy.client.put("/-/admin/keys", headers=auth(), json={})
    assert wrong.status == 405 and set(wrong.headers["Allow"].split(", ")) == {"GET", "POST"}
    assert (await proxy.client.get("/-/admin/budgets/x", headers=auth())).status == 405
    assert (await proxy.client.get("/-/admin/nothing", headers=auth())).status == 404
    # ... and only with the token: without it nothing, not even which paths exist.
    assert (await proxy.client.put("/-/admin/keys")).status == 401
    assert (await proxy.client.get("/-/admin/nothing")).status == 401
    assert (await proxy.client.get("/-/admin/nothing", headers={**auth(), "Host": "evil.example"})).status == 403
    # The page's endpoints still answer beside it, and show a budget made at runtime at once.
    assert (await (await proxy.client.get("/-/budgets")).json()) == {"configured": False, "budgets": []}
    made = await proxy.client.put("/-/admin/budgets/cap", headers=auth(), json={"limit_usd": "1", "period": "day"})
    assert made.status == 200, await made.text()
    page = await (await proxy.client.get("/-/budgets")).json()
    assert page["configured"] is True and [b["budget"] for b in page["budgets"]] == ["cap"]
    assert upstream.app[RECEIVED] == []


async def test_admin_api_needs_its_token(start_proxy: Any, admin_config: Any, upstream: Any) -> None:
    proxy = await start_proxy(admin_config)
    for headers in ({}, auth("wrong"), auth(ADMIN_TOKEN + "x"), {"Authorization": ADMIN_TOKEN}, auth(UPSTREAM_KEY)):
        for method, path in (("GET", "/-/admin/keys"), ("POST", "/-/admin/keys"), ("DELETE", "/-/admin/keys/a"),
                             ("PUT", "/-/admin/budgets/b"), ("DELETE", "/-/admin/budgets/b")):
            response = await proxy.client.request(method, path, headers=headers, json={"name": "a", "limit_usd": 1})
            assert response.status == 401, (method, path, headers)
            assert (await response.json())["error"]["code"] == 401
    assert (await (await proxy.client.get("/-/admin/keys", headers=auth())).json()) == []
    # Loopback proxy: a page that resolved its own name to 127.0.0.1 is refused even with the token.
    response = await proxy.client.get("/-/admin/keys", headers={**auth(), "Host": "evil.example"})
    assert response.status == 403
    assert upstream.app[RECEIVED] == []


async def test_admin_keys_and_budgets_apply_at_once(
    start_proxy: Any, admin_config: Any, upstream: Any, caplog: pytest.LogCaptureFixture, db_target: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    if isinstance(db_target, str):  # the same on PostgreSQL
        admin_config = dataclasses.replace(admin_config, db_url=db_target)
    proxy = await start_proxy(admin_config)
    response = await proxy.client.post("/-/admin/keys", headers=auth(), json={"name": "ci", "project": "builds", "budget": "0.01/day"})
    assert response.status == 201 and response.headers["Cache-Control"] == "no-store"
    made = await response.json()
    key = made["key"]
    assert made["name"] == "ci" and key.startswith("sk-spend-")
    assert await call(proxy, key) == 200
    listing = await (await proxy.client.get("/-/admin/keys", headers=auth())).text()
    assert "ci" in listing and key not in listing
    again = await proxy.client.post("/-/admin/keys", headers=auth(), json={"name": "ci"})
    assert again.status == 409
    assert (await proxy.client.post("/-/admin/keys", headers=auth(), json={"name": "bad name"})).status == 400

    # A runtime budget on every openai/* request, already over with the $0.001 spent: 402 at once.
    response = await proxy.client.put("/-/admin/budgets/tiny", headers=auth(), json={"limit_usd": "0.0005", "period": "day", "match": {"model": "openai/*"}})
    assert response.status == 200, await response.text()
    assert await call(proxy, key) == 402
    assert (await proxy.client.delete("/-/admin/budgets/tiny", headers=auth())).status == 200
    assert (await proxy.client.delete("/-/admin/budgets/tiny", headers=auth())).status == 404
    assert await call(proxy, key, cost="0.02") == 200
    assert await call(proxy, key) == 402  # the key's own budget: $0.021 of $0.01

    assert (await proxy.client.delete("/-/admin/keys/ci", headers=auth())).status == 200
    forwarded = len(upstream.app[RECEIVED])
    assert await call(proxy, key) == 401
    assert len(upstream.app[RECEIVED]) == forwarded

    await proxy.settle()
    (entry,) = await (await proxy.client.get("/-/admin/keys", headers=auth())).json()
    assert entry["status"] == "revoked" and entry["project"] == "builds" and entry["spent_usd"] == "0.021"
    assert entry["last_used"] is not None
    # Neither the key nor the admin token is in the database files or the log.
    logs = "\n".join(r.getMessage() for r in caplog.records).encode()
    if isinstance(db_target, str):
        with open_reader(db_target) as reader:
            places = {t: repr(reader.execute(f"SELECT * FROM {t}").fetchall()).encode() for t in ("proxy_keys", "runtime_budgets", "meta")}
    else:
        db = proxy.db_path
        places = {p.name: p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name)}
    places["log"] = logs
    secrets = (key, key.removeprefix("sk-spend-")[:20], ADMIN_TOKEN)
    assert {name for name, blob in places.items() if any(s.encode() in blob for s in secrets)} == set()


async def test_admin_budget_clash_with_config_is_refused(start_proxy: Any, admin_config: Any) -> None:
    from proxy.budgets.spec import parse_budgets

    config = dataclasses.replace(admin_config, budgets=parse_budgets([{"name": "daily", "limit_usd": 5}]))
    proxy = await start_proxy(config)
    response = await proxy.client.put("/-/admin/budgets/daily", headers=auth(), json={"limit_usd": 1})
    assert response.status == 409
    assert "config" in (await response.json())["error"]["message"]
    assert (await proxy.client.delete("/-/admin/budgets/daily", headers=auth())).status == 409


def test_admin_config(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_config({"admin": {"token_env": "T"}}).admin.token_env == "T"
    with pytest.raises(ConfigError, match=r"^admin\.tokenenv: unknown key"):
        parse_config({"admin": {"tokenenv": "T"}})
    from proxy.server.app import create_app

    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ConfigError, match="^admin.token_env: environment variable NOT_SET_ANYWHERE is not set"):
        create_app(parse_config({"admin": {"token_env": "NOT_SET_ANYWHERE"}}))
    # Runtime keys live in either engine: a PostgreSQL db no longer refuses the admin API.
    monkeypatch.setenv("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
    create_app(parse_config({"admin": {"token_env": "TEST_ADMIN_TOKEN"}, "db": "postgresql://localhost/spend"}))


async def test_admin_answers_allowed_hosts_as_metrics_does(start_proxy: Any, admin_config: Any) -> None:
    proxy = await start_proxy(dataclasses.replace(admin_config, allowed_hosts=("proxy.lan",)))
    for host, status in (("proxy.lan", 200), ("proxy.lan:8080", 200), ("localhost", 200), ("evil.example", 403)):
        assert (await proxy.client.get("/-/admin/keys", headers={**auth(), "Host": host})).status == status, host
        assert (await proxy.client.get("/healthz", headers={"Host": host})).status == status, host


async def test_a_new_key_works_only_once_its_budget_is_enforced(start_proxy: Any, admin_config: Any) -> None:
    """The poller must not let a key in while the budget made with it is still being set up: the
    budget's warm-up waits for the writer, and requests in that gap slipped past the budget."""
    proxy = await start_proxy(admin_config)
    db = key_store.connect(proxy.db_path)
    try:
        key = key_store.create_key(db, "dave", datetime.now(UTC), budget="0.01/day")
    finally:
        db.close()
    # Hold the write lock, so the budget's set-up (which waits for the writer) cannot finish yet.
    lock = sqlite3.connect(proxy.db_path, isolation_level=None, timeout=5)
    lock.execute("BEGIN IMMEDIATE")
    refresh = asyncio.create_task(proxy.app[RUNTIME].refresh())
    try:
        await asyncio.sleep(0.5)
        assert not refresh.done()
        assert await call(proxy, key) == 401  # not yet: its budget is not enforced
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert await refresh
    assert await call(proxy, key, cost="0.02") == 200
    assert await call(proxy, key) == 402
