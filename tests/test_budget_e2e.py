"""Budgets in the request path: warnings reach a webhook, a spent budget refuses with 402, restarts keep it."""

from __future__ import annotations

import asyncio
import json
import logging
from decimal import Decimal
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web

from proxy.budgets.alerts import parse_channels
from proxy.budgets.spec import parse_budgets

KEY = "sk-or-v1-budget-" + "cd" * 20
CHAT = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def receiver(aiohttp_server: Any) -> tuple[str, list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    return str(server.make_url("/hook")), received


def _budget_config(make_config: Any, url: str, limit: str = "0.01", **extra: Any) -> Any:
    budgets = parse_budgets([{"name": "daily", "limit_usd": limit, "period": "day", "scope": "total", "warn_at": [0.5, 0.8], "action": "block", **extra}])
    alerts = parse_channels([{"type": "webhook", "url": url}, {"type": "log"}])
    return make_config(budgets=budgets, alerts=alerts, timezone="Europe/Berlin")


async def _chat(session: aiohttp.ClientSession, base: str, cost: str = "0.003", stream: bool = False, delay_ms: int = 0) -> aiohttp.ClientResponse:
    headers = {"Authorization": f"Bearer {KEY}", "X-Fake-Cost": cost, "X-Fake-Delay-Ms": str(delay_ms)}
    response = await session.post(f"{base}/chat/completions", json={**CHAT, "stream": stream}, headers=headers)
    await response.read()
    return response


async def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_warnings_then_block_then_restart_keeps_it_spent(
    start_proxy: Any, make_config: Any, receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url, received = receiver
    config = _budget_config(make_config, url)
    proxy = await start_proxy(config)
    remaining = []
    async with aiohttp.ClientSession() as session:
        for _ in range(4):  # $0.003 each: 30%, 60% (warn 50%), 90% (warn 80%), 120% (spent)
            response = await _chat(session, proxy.base)
            assert response.status == 200
            remaining.append(Decimal(response.headers["X-Spend-Budget-Remaining-USD"]))
        with caplog.at_level(logging.WARNING, logger="proxy.server.forward"):
            refused = await _chat(session, proxy.base)
        body = await refused.json()
    assert remaining == [Decimal("0.01"), Decimal("0.007"), Decimal("0.004"), Decimal("0.001")]
    assert refused.status == 402
    assert refused.headers["x-should-retry"] == "false"
    assert int(refused.headers["Retry-After"]) > 0
    assert body["error"]["code"] == 402
    message = body["error"]["message"]
    assert message.startswith("openrouter-spend: budget 'daily' is spent: $0.012 of $0.01")
    assert "resets" in message and "Europe/Berlin" in message
    assert any("event=budget_blocked" in r.getMessage() for r in caplog.records)

    await _wait_for(lambda: any(a["kind"] == "spent" for a in received))
    kinds = [(a["kind"], a["threshold"]) for a in received]
    assert ("warn", "0.5") in kinds and ("warn", "0.8") in kinds and ("spent", "1") in kinds
    assert KEY not in json.dumps(received)

    await proxy.settle()
    rows = proxy.rows()
    assert [r["status"] for r in rows] == [200, 200, 200, 200, 402]
    blocked = rows[-1]
    assert blocked["outcome"] == "blocked" and Decimal(blocked["cost_usd"]) == 0
    metrics = await proxy.metrics_text()
    assert 'openrouter_proxy_budget_blocked_total{budget="daily"} 1.0' in metrics

    # A restart recomputes the spend from SQLite: still spent, and no alert is sent twice.
    await proxy.client.close()
    sent_before = len(received)
    again = await start_proxy(config)
    async with aiohttp.ClientSession() as session:
        refused_again = await _chat(session, again.base)
    assert refused_again.status == 402
    await asyncio.sleep(0.2)
    assert len(received) == sent_before
    assert 'openrouter_proxy_budget_spent_usd{budget="daily",scope="total"} 0.012' in await again.metrics_text()


async def test_sdks_show_the_budget_message(start_proxy: Any, make_config: Any, receiver: Any) -> None:
    config = _budget_config(make_config, receiver[0], limit="0.001")
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession() as session:
        assert (await _chat(session, proxy.base)).status == 200
    async with openai.AsyncOpenAI(base_url=proxy.base, api_key=KEY) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert caught.value.status_code == 402
    assert "budget 'daily' is spent" in str(caught.value)
    async with anthropic.AsyncAnthropic(base_url=str(proxy.server.make_url("/api")), auth_token=KEY) as client:
        with pytest.raises(anthropic.APIStatusError) as caught_a:
            await client.messages.create(model="anthropic/claude-sonnet-4.5", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert caught_a.value.status_code == 402
    assert "budget 'daily' is spent" in str(caught_a.value)
    # The SDKs honour x-should-retry: false, so each refusal is exactly one request.
    await proxy.settle()
    assert [r["status"] for r in proxy.rows()] == [200, 402, 402]


async def test_fifty_concurrent_streams_at_the_boundary(start_proxy: Any, make_config: Any, receiver: Any) -> None:
    cost = Decimal("0.003")
    limit = Decimal("0.01")
    proxy = await start_proxy(_budget_config(make_config, receiver[0], limit=str(limit)))
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # $0.009 spent: just under the limit
            assert (await _chat(session, proxy.base, stream=True)).status == 200
        responses = await asyncio.gather(*(_chat(session, proxy.base, stream=True, delay_ms=20) for _ in range(50)))
    statuses = [r.status for r in responses]
    admitted = statuses.count(200)
    assert statuses.count(402) == 50 - admitted
    await proxy.settle()
    spent = sum(Decimal(r["cost_usd"]) for r in proxy.rows())
    # With $0.009 spent, the first stream is admitted and reserves the mean cost ($0.003): spent
    # plus reserved reaches the limit, so every other stream is held back (402) until it settles,
    # and then the budget is spent. The overshoot is exactly that one in-flight request's excess.
    assert admitted == 1, f"reservations should hold the rest back, {admitted} got through"
    assert spent == Decimal("0.009") + cost
    assert spent - limit == Decimal("0.002")


async def test_budgets_command_shows_spend_limit_share_and_reset(
    start_proxy: Any, make_config: Any, receiver: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import json as jsonlib

    from proxy.cli.main import main

    proxy = await start_proxy(_budget_config(make_config, receiver[0], limit="0.02"))
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            assert (await _chat(session, proxy.base)).status == 200
    await proxy.settle()
    config = tmp_path / "budgets.yaml"
    config.write_text(
        "timezone: Europe/Berlin\n"
        "budgets: [{name: daily, limit_usd: 0.02, period: day, scope: total, warn_at: [0.5, 0.8], action: block}]\n"
    )
    assert main(["budgets", "--config", str(config), "--db", str(proxy.db_path), "--format", "json"]) == 0
    [status] = jsonlib.loads(capsys.readouterr().out)
    assert status["budget"] == "daily" and status["scope"] == "total"
    assert Decimal(status["spent_usd"]) == Decimal("0.006") and Decimal(status["limit_usd"]) == Decimal("0.02")
    assert Decimal(status["share"]) == Decimal("0.3")
    assert status["resets_at"].endswith("T00:00:00+01:00")  # midnight in Berlin, in winter
    assert status["projected_usd"] is not None
    assert main(["budgets", "--config", str(config), "--db", str(proxy.db_path)]) == 0
    table = capsys.readouterr().out
    assert "daily" in table and "$0.006" in table and "30.0%" in table
