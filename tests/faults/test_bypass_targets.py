"""Property: whatever request target a client crafts, a call the upstream bills was classified
billed, checked against the budget and recorded (issue 11).

The fake upstream bills like the most forgiving server imaginable (any case, `//`, dot segments,
`;params`, percent-encoding even twice), and the proxy's one budget is spent. So every target is
either refused, or reaches no billed handler: the upstream's count of billed calls never moves.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from proxy.budgets.spec import parse_budgets
from proxy.config import Config
from proxy.server.app import RECORDER, create_app
from proxy.store import records
from tests.fake_openrouter import BILLED, fake_app
from tests.faults.conftest import KEY, read_rows
from tests.faults.test_bypass import raw

ENDPOINTS = ["chat/completions", "completions", "messages", "responses", "embeddings", "models", "messages/count_tokens"]
PREFIXES = ["/api/v1/", "/v1/", "/p/acme/api/v1/", "/p/a%2Fb/v1/", "/API/v1/", "/api//v1/", "/api/v1", "/api/V1/"]
BODY = json.dumps({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


def _encode(char: str, how: int) -> str:
    if how == 0 or char == "%":
        return char
    hexed = f"%{ord(char):02X}" if how == 1 else f"%{ord(char):02x}"
    return hexed if how < 3 else "%25" + hexed[1:]  # 3: encoded twice


@st.composite
def targets(draw: st.DrawFn) -> str:
    endpoint = draw(st.sampled_from(ENDPOINTS))
    # Case, per character.
    endpoint = "".join(c.upper() if draw(st.booleans()) and c.isalpha() else c for c in endpoint)
    segments = endpoint.split("/")
    # Dot segments and empty segments anywhere.
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(segments)))
        segments[at:at] = draw(st.sampled_from([[""], ["."], ["x", ".."], ["%2e"], ["%2E%2e"]]))
    path = "/".join(segments)
    # Percent-encoding, per character (never breaking an existing escape).
    if draw(st.booleans()):
        path = "".join(_encode(c, draw(st.integers(0, 3))) if c not in "%" else c for c in path)
    suffix = draw(st.sampled_from(["", "/", "//", ";x", "%3Bx", "%20", "#", "#frag", "%23x", "?", "%3F", ".", "%00"]))
    query = draw(st.sampled_from(["", "?a=1", "?a=1#b", "?stream=true&x=%2F", "?#"]))
    return draw(st.sampled_from(PREFIXES)) + path + suffix + query


async def _scenario(target: str, db: Path, method: str = "POST") -> tuple[int, int]:
    upstream = TestServer(fake_app())
    await upstream.start_server()
    budgets = parse_budgets([{"name": "all", "limit_usd": "0.000001", "period": "day", "scope": "total", "action": "block"}])
    config = Config(upstream=str(upstream.make_url("/api/v1")), db=db, catalog_refresh_s=0, budgets=budgets)
    app = create_app(config, CollectorRegistry())
    proxy = TestServer(app)
    await proxy.start_server()
    try:
        headers = [("Authorization", f"Bearer {KEY}"), ("Content-Type", "application/json")]
        assert (await raw(proxy.port or 0, "/api/v1/chat/completions", headers=headers, body=BODY)).status == 200
        reply = await raw(proxy.port or 0, target, method=method, headers=headers, body=BODY)
        recorder = app[RECORDER]
        for _ in range(200):
            if recorder.depth() == 0:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        return reply.status, len(upstream.app[BILLED])
    finally:
        await proxy.close()
        await upstream.close()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=targets(), method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "PATCH", "DELETE"]))
@example(target="/api/v1/chat/completions#x", method="POST")
@example(target="/api/v1/CHAT//COMPLETIONS/", method="POST")
@example(target="/v1/chat/completions;x", method="POST")
@example(target="/api/v1/chat/%2563ompletions", method="POST")
@example(target="/api/v1/chat/completions", method="GET")
def test_no_target_reaches_a_billed_endpoint_unclassified(target: str, method: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "u.db"
        status, billed = asyncio.run(_scenario(target, db, method))
        rows = read_rows(db)
    forwarded = [r for r in rows if r["outcome"] != records.BLOCKED]
    # Only the seed call was billed, and it is the one forwarded row: the target was refused
    # (budget, 400, 404) or reached something unbilled.
    assert billed == len(forwarded) == 1, (method, target, status, billed, len(forwarded))
