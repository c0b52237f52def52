"""Security: the upstream key never lands in SQLite, logs, metrics, error bodies or alert payloads; salted fingerprints; file modes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.budgets.alerts import parse_channels
from proxy.budgets.spec import parse_budgets
from tests.faults.conftest import CHAT, KEY, wait_for

HEX = KEY.removeprefix("sk-or-v1-")


@pytest.fixture
async def hooks(aiohttp_server: Any) -> tuple[str, list[bytes]]:
    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    return str(server.make_url("/hook")), received


def _secrets_in(blob: bytes) -> list[str]:
    found = []
    for needle in (KEY, HEX, HEX[:32], HEX[32:]):
        if needle.encode() in blob:
            found.append(needle)
    return found


async def test_the_key_never_appears_anywhere(
    start_proxy: Any, make_config: Any, hooks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url, payloads = hooks
    budgets = parse_budgets([{"name": "daily", "limit_usd": "0.02", "period": "day", "scope": "total", "warn_at": [0.5, 0.8], "action": "block"}])
    alerts = parse_channels([{"type": "webhook", "url": url}, {"type": "log"}])
    proxy = await start_proxy(
        make_config(budgets=budgets, alerts=alerts, first_byte_timeout_s=0.5, backfill_delays_s=(0.1, 0.2))
    )
    bearer = {"Authorization": f"Bearer {KEY}", "X-Fake-Cost": "0.004"}
    anthropic = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "X-Fake-Cost": "0.004"}
    bodies: list[bytes] = []
    traffic: list[tuple[str, dict[str, str], dict[str, Any] | bytes]] = [
        ("/api/v1/chat/completions", {**bearer, "X-Fake": "error500"}, CHAT),
        ("/api/v1/chat/completions", {**bearer, "X-Fake": "error429"}, {**CHAT, "stream": True}),
        ("/api/v1/chat/completions", {**bearer, "X-Fake": "stall"}, CHAT),
        ("/api/v1/chat/completions", bearer, b'{"model": "openai/gpt-4o", '),
        ("/api/v1/chat/completions", {**bearer, "X-Fake": "garbage"}, {**CHAT, "stream": True}),
        ("/api/v1/chat/completions", {**bearer, "X-Fake": "drop"}, {**CHAT, "stream": True}),
        ("/api/v1/messages", {**anthropic, "X-Fake": "midstream-error"}, {**CHAT, "model": "anthropic/claude-sonnet-4.5", "stream": True}),
        ("/api/v1/chat/completions", bearer, CHAT),
        ("/api/v1/chat/completions", bearer, {**CHAT, "stream": True}),
        ("/api/v1/messages", anthropic, {**CHAT, "model": "anthropic/claude-sonnet-4.5"}),
        ("/api/v1/responses", bearer, {"model": "openai/gpt-4o", "input": "hi", "stream": True}),
        ("/api/v1/chat/completions", bearer, CHAT),
        ("/api/v1/chat/completions", bearer, CHAT),
        ("/api/v1/chat/completions", bearer, CHAT),
        ("/api/v1/chat/completions", bearer, CHAT),  # over the budget by now: 402
        ("/api/v1/generation?id=nope", bearer, b""),
        ("/nowhere", bearer, b""),
    ]
    statuses = []
    for path, headers, body in traffic:
        if isinstance(body, dict):
            response = await proxy.client.post(path, json=body, headers=headers)
        elif path.startswith("/api/v1/generation") or path == "/nowhere":
            response = await proxy.client.get(path, headers=headers)
        else:
            response = await proxy.client.post(path, data=body, headers={**headers, "Content-Type": "application/json"})
        statuses.append(response.status)
        try:
            bodies.append(await response.read())
        except Exception:  # a deliberately broken stream
            bodies.append(b"")
        bodies.append(json.dumps(dict(response.headers)).encode())
    assert {500, 429, 504, 400, 200, 402, 404} <= set(statuses), statuses
    await wait_for(lambda: len(payloads) >= 1, timeout=5, what="an alert webhook")
    await asyncio.sleep(0.5)  # back-fills run with the client's key: let them finish
    await proxy.settle()
    metrics = (await proxy.metrics_text()).encode()
    logs = "\n".join(
        record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        for record in caplog.records
    ).encode()
    db = proxy.db_path
    files = {p.name: p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name)}
    assert f"{db.name}-wal" in files
    places = {"metrics": metrics, "logs": logs, "bodies": b"\n".join(bodies), "alerts": b"\n".join(payloads), **files}
    leaks = {name: found for name, blob in places.items() if (found := _secrets_in(blob))}
    assert leaks == {}
    # The test can see a key: the upstream got it, and a fingerprint stands in for it in the rows.
    assert len(logs) > 0 and len(payloads) >= 1
    rows = proxy.rows()
    assert rows and all(r["key_fingerprint"] and len(r["key_fingerprint"]) == 16 for r in rows if r["status"] != 404)


async def test_fingerprints_are_salted_per_database(start_proxy: Any, make_config: Any, tmp_path: Path) -> None:
    prints = []
    for name in ("one.db", "two.db"):
        proxy = await start_proxy(make_config(db=tmp_path / name))
        response = await proxy.client.post("/api/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
        assert response.status == 200
        await proxy.settle()
        [row] = proxy.rows()
        prints.append(row["key_fingerprint"])
    assert prints[0] and prints[1] and prints[0] != prints[1]


async def test_database_files_are_private(proxy: Any) -> None:
    response = await proxy.client.post("/api/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status == 200
    await proxy.settle()
    db = proxy.db_path
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if path.exists():
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
