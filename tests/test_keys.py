"""Keys and budgets at runtime: `keys create|list|revoke`, `budgets set|delete`, picked up by a running
proxy process without a restart; the key is stored only as a salted hash."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import openai

from proxy.store.reader import open_reader
from tests.fake_openrouter import RECEIVED
from tests.faults.conftest import ROOT, spawn_proxy, started  # noqa: F401  (fixtures)

UPSTREAM_KEY = "sk-or-v1-" + "7" * 64
MANAGED = {"managed_key_env": "TEST_MANAGED_KEY"}
ENV = {"TEST_MANAGED_KEY": UPSTREAM_KEY}
CHAT: dict[str, Any] = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


async def cli(*args: str, db: Path | str, check: bool = True) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args, "--db", str(db), cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    if check:
        assert proc.returncode == 0, err.decode()
    return proc.returncode, out.decode(), err.decode()


async def call(base: str, key: str, cost: str = "0.001") -> int:
    """Status of one chat completion through the proxy with the openai SDK."""
    async with openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0) as client:
        try:
            await client.chat.completions.create(**CHAT, extra_headers={"X-Fake-Cost": cost})
        except openai.APIStatusError as exc:
            return exc.status_code
    return 200


async def until_status(base: str, key: str, status: int, tries: int = 60) -> int:
    """Calls until one answers `status` (the proxy polls every 2 s); returns how many calls it took."""
    for attempt in range(1, tries + 1):
        if await call(base, key) == status:
            return attempt
        await asyncio.sleep(0.25)
    raise AssertionError(f"never answered {status}")


async def test_key_made_at_runtime_works_then_revoke_gives_401_and_nothing_forwarded(
    spawn_proxy: Any, upstream: Any, db_target: Path | str  # noqa: F811
) -> None:
    # On each engine: `keys create` on PostgreSQL works in a proxy on PostgreSQL as on SQLite.
    proxy = await spawn_proxy(str(upstream.make_url("/api/v1")), db=db_target, env=ENV, **MANAGED)
    assert await call(proxy.base, "sk-spend-not-made-yet") == 401
    _, out, _ = await cli("keys", "create", "--name", "alice", "--project", "acme", db=proxy.db)
    key = out.strip()
    assert key.startswith("sk-spend-") and len(key) > 40
    await until_status(proxy.base, key, 200)
    seen = upstream.app[RECEIVED]
    assert seen and all(r["headers"].get("Authorization") == f"Bearer {UPSTREAM_KEY}" for r in seen)
    assert not any(key in json.dumps(r["headers"]) for r in seen)

    _, listing, _ = await cli("keys", "list", "--format", "json", db=proxy.db)
    (entry,) = json.loads(listing)
    assert entry["name"] == "alice" and entry["project"] == "acme" and entry["status"] == "live"
    assert entry["last_used"] is not None and key not in listing

    await cli("keys", "revoke", "alice", db=proxy.db)
    await until_status(proxy.base, key, 401)
    forwarded = len(seen)
    assert await call(proxy.base, key) == 401
    assert len(seen) == forwarded

    rows = [r for r in _rows(proxy.db) if r["key_alias"] == "alice"]
    assert rows and all(r["project"] == "acme" for r in rows)
    # The key is nowhere: not in the database files, not in the proxy's log.
    files = {}
    if isinstance(proxy.db, Path):
        files = {p.name: p.read_bytes() for p in proxy.db.parent.iterdir() if p.name.startswith(proxy.db.name)}
    else:
        with open_reader(proxy.db) as db:
            files["proxy_keys"] = repr(db.execute("SELECT * FROM proxy_keys").fetchall()).encode()
    files["log"] = proxy.log_path.read_bytes()
    secret = key.removeprefix("sk-spend-")
    assert {name for name, blob in files.items() if secret.encode() in blob or secret[:20].encode() in blob} == set()


async def test_expired_key_gets_401(spawn_proxy: Any, upstream: Any) -> None:  # noqa: F811
    proxy = await spawn_proxy(str(upstream.make_url("/api/v1")), env=ENV, **MANAGED)
    # Long enough that a loaded machine still sees it work first (the CLI start and one poll).
    _, out, _ = await cli("keys", "create", "--name", "temp", "--expires", "20s", db=proxy.db)
    key = out.strip()
    await until_status(proxy.base, key, 200)
    await until_status(proxy.base, key, 401, tries=120)
    forwarded = len(upstream.app[RECEIVED])
    assert await call(proxy.base, key) == 401
    assert len(upstream.app[RECEIVED]) == forwarded
    _, listing, _ = await cli("keys", "list", "--format", "json", db=proxy.db)
    assert json.loads(listing)[0]["status"] == "expired"


async def test_key_budget_is_enforced(spawn_proxy: Any, upstream: Any, db_target: Path | str) -> None:  # noqa: F811
    proxy = await spawn_proxy(str(upstream.make_url("/api/v1")), db=db_target, env=ENV, **MANAGED)
    _, out, _ = await cli("keys", "create", "--name", "bob", "--budget", "0.01/day", db=proxy.db)
    key = out.strip()
    _, plain, _ = await cli("keys", "create", "--name", "carol", db=proxy.db)
    await until_status(proxy.base, key, 200)  # spends $0.001
    # Carol was made after bob: the proxy may have loaded bob's key a poll before hers.
    await until_status(proxy.base, plain.strip(), 200)
    statuses = [await call(proxy.base, key, cost="0.004") for _ in range(4)]
    assert statuses == [200, 200, 200, 402]  # 0.001 + 3 x 0.004 >= 0.01
    # The budget is bob's alone (carol's key may reach the proxy one poll after bob's).
    await until_status(proxy.base, plain.strip(), 200)
    _, listing, _ = await cli("keys", "list", "--format", "json", db=proxy.db)
    bob = next(e for e in json.loads(listing) if e["name"] == "bob")
    assert bob["budget"] == "0.01/day" and bob["spent_usd"] == "0.013"
    # A restart reads the key, its budget and the spend so far back from the database.
    proxy.proc.terminate()
    assert await proxy.wait_exit(20) == 0
    again = await spawn_proxy(str(upstream.make_url("/api/v1")), db=proxy.db, env=ENV, **MANAGED)
    assert await call(again.base, key) == 402
    assert await call(again.base, plain.strip()) == 200


async def test_budget_set_at_runtime_counts_past_spend_and_delete_lifts_it(
    spawn_proxy: Any, upstream: Any, db_target: Path | str  # noqa: F811
) -> None:
    proxy = await spawn_proxy(str(upstream.make_url("/api/v1")), db=db_target)
    own_key = "sk-or-v1-" + "5" * 64
    for _ in range(3):
        assert await call(proxy.base, own_key, cost="0.004") == 200
    await cli("budgets", "set", "cap", "--limit", "0.01", "--period", "day", "--match", "model=openai/*", db=proxy.db)
    # No restart: the proxy warms the new budget up from the log ($0.012 spent) and blocks.
    await until_status(proxy.base, own_key, 402)
    _, out, _ = await cli("budgets", db=proxy.db)
    assert "cap" in out and "$0.01" in out
    await cli("budgets", "delete", "cap", db=proxy.db)
    await until_status(proxy.base, own_key, 200)


async def test_names_that_clash_with_the_config_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "budgets:\n  - {name: daily, limit_usd: 5}\nkeys:\n  - {alias: alice, fingerprint: 0123456789abcdef}\n"
    )
    db = tmp_path / "u.db"
    code, _, err = await cli("budgets", "set", "daily", "--limit", "1", "--config", str(config), db=db, check=False)
    assert code == 2 and err.strip().splitlines() == ["openrouter-spend: name: 'daily' is a budget in the config; pick another name"]
    code, out, err = await cli("keys", "create", "--name", "alice", "--config", str(config), db=db, check=False)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "config" in err
    code, _, err = await cli("keys", "create", "--name", "x", "--budget", "lots", db=db, check=False)
    assert code == 2 and err.startswith("openrouter-spend: --budget:")
    code, _, err = await cli("keys", "revoke", "nobody", db=db, check=False)
    assert code == 2 and "no live key" in err


def _rows(db: Path | str) -> list[dict[str, Any]]:
    conn = open_reader(db)
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests")]
    finally:
        conn.close()


def _run_here(args: list[str], home: Path, **extra: str) -> Any:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_SPEND_", "XDG_"))}
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=60,
                          cwd=home, env={**env, "PYTHONPATH": str(ROOT), "HOME": str(home), **extra})


def test_keys_and_budget_commands_find_the_db_as_serve_does(tmp_path: Path) -> None:
    """No --db: the per-user data dir, then the user config's db, then $OPENROUTER_SPEND_DB; never ./openrouter-spend.db
    unless one is already there (the old default)."""
    made = _run_here(["keys", "create", "--name", "alice"], tmp_path)
    assert made.returncode == 0, made.stderr
    default = tmp_path / ".local/share/openrouter-spend/spend.db"
    assert default.is_file() and not (tmp_path / "openrouter-spend.db").exists()
    assert _run_here(["budgets", "set", "cap", "--limit", "1"], tmp_path).returncode == 0
    listed = _run_here(["keys", "list", "--format", "json"], tmp_path)
    assert [k["name"] for k in json.loads(listed.stdout)] == ["alice"], listed.stderr
    # `budgets` needs no config file when the budgets were made at runtime.
    report = _run_here(["budgets", "--format", "json"], tmp_path)
    assert report.returncode == 0 and [b["budget"] for b in json.loads(report.stdout)] == ["cap"], report.stderr

    configured = tmp_path / "configured.db"
    user = tmp_path / ".config/openrouter-spend/config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text(f"db: {configured}\n")
    assert _run_here(["keys", "create", "--name", "bob"], tmp_path).returncode == 0
    assert [k["name"] for k in json.loads(_run_here(["keys", "list", "--format", "json"], tmp_path).stdout)] == ["bob"]

    env_db = tmp_path / "env.db"
    assert _run_here(["keys", "create", "--name", "carol"], tmp_path, OPENROUTER_SPEND_DB=str(env_db)).returncode == 0
    assert _run_here(["budgets", "delete", "cap"], tmp_path, OPENROUTER_SPEND_DB=str(default)).returncode == 0
    listed = _run_here(["keys", "list", "--format", "json"], tmp_path, OPENROUTER_SPEND_DB=str(env_db))
    assert [k["name"] for k in json.loads(listed.stdout)] == ["carol"]
