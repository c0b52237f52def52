"""Finding the database and config without flags, and `check-config` failing exactly where `serve` does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli.locate import default_config, default_db, resolve_config, resolve_db
from proxy.config import parse_config

ROOT = Path(__file__).parent.parent


def test_db_order_flag_env_config_default(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    configured = parse_config({"db": str(tmp_path / "from-config.db")})
    unconfigured = parse_config({})
    assert resolve_db("flag.db", configured, {**env, "OPENROUTER_SPEND_DB": "env.db"}, cwd=tmp_path) == Path("flag.db")
    assert resolve_db(None, configured, {**env, "OPENROUTER_SPEND_DB": "env.db"}, cwd=tmp_path) == Path("env.db")
    assert resolve_db(None, configured, env, cwd=tmp_path) == tmp_path / "from-config.db"
    assert resolve_db(None, unconfigured, env, cwd=tmp_path) == tmp_path / ".local/share/openrouter-spend/spend.db"
    assert resolve_db(None, None, env, cwd=tmp_path) == default_db(env)
    xdg = {**env, "XDG_DATA_HOME": str(tmp_path / "data")}
    assert resolve_db(None, None, xdg, cwd=tmp_path) == tmp_path / "data/openrouter-spend/spend.db"
    # A relative XDG value is invalid per the spec and ignored.
    assert resolve_db(None, None, {**env, "XDG_DATA_HOME": "rel"}, cwd=tmp_path) == default_db(env)


def test_old_default_in_cwd_is_kept_with_a_notice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"HOME": str(tmp_path / "home")}
    (tmp_path / "openrouter-spend.db").write_bytes(b"")
    assert resolve_db(None, None, env, cwd=tmp_path) == tmp_path / "openrouter-spend.db"
    notice = capsys.readouterr().err
    assert "old default" in notice and "mv " in notice and str(default_db(env)) in notice
    # Once the per-user file exists it wins.
    default_db(env).parent.mkdir(parents=True)
    default_db(env).write_bytes(b"")
    assert resolve_db(None, None, env, cwd=tmp_path) == default_db(env)


def test_config_order_flag_env_user_file(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert resolve_config(None, env) is None
    user = default_config(env)
    user.parent.mkdir(parents=True)
    user.write_text("port: 9000\n")
    assert user == tmp_path / ".config/openrouter-spend/config.yaml"
    assert resolve_config(None, env) == user
    assert resolve_config(None, {**env, "OPENROUTER_SPEND_CONFIG": "env.yaml"}) == Path("env.yaml")
    assert resolve_config("flag.yaml", {**env, "OPENROUTER_SPEND_CONFIG": "env.yaml"}) == Path("flag.yaml")
    xdg = {**env, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    assert resolve_config(None, xdg) is None


def _env(home: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_SPEND_", "XDG_"))}
    return {**base, "PYTHONPATH": str(ROOT), "HOME": str(home), **extra}


def _run(args: list[str], home: Path, timeout: float = 30, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=home, env=_env(home, **extra))


def test_check_config_finds_the_user_config(tmp_path: Path) -> None:
    missing = _run(["check-config"], tmp_path)
    assert missing.returncode == 2 and "looked at $OPENROUTER_SPEND_CONFIG" in missing.stderr
    assert str(tmp_path / ".config/openrouter-spend/config.yaml") in missing.stderr
    user = tmp_path / ".config/openrouter-spend/config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("port: 9000\n")
    found = _run(["check-config"], tmp_path)
    assert found.returncode == 0 and str(user) in found.stdout, found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Configs that parse but that `serve` refuses at start-up, as the tests elsewhere have them.
START_UP_ERRORS = [
    ("metrics: {token_env: NOT_SET_TOKEN}\n", "metrics.token_env: environment variable NOT_SET_TOKEN is not set"),
    ("host: 0.0.0.0\n", "metrics.token_env: required when /metrics is served on a non-loopback address"),
    ("alerts:\n  - {type: slack, url_env: NOT_SET_HOOK}\n", "alerts[0].url_env: environment variable NOT_SET_HOOK is not set"),
    (
        "managed_key_env: NOT_SET_KEY\nkeys:\n  - {alias: a, key_env: NOT_SET_A}\n",
        "managed_key_env: environment variable NOT_SET_KEY is not set",
    ),
    ("catalog: {file: /no/such/listing.json}\n", "catalog.file: cannot read /no/such/listing.json"),
    ("port: eighty\n", "port: expected a whole number"),
    ("budgets:\n  - name: day\n    limit_usd: ten\n", "budgets[0].limit_usd"),
]


@pytest.mark.parametrize(("text", "needle"), START_UP_ERRORS)
def test_check_config_fails_where_serve_fails(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(f"port: {_free_port()}\ndb: {tmp_path / 'u.db'}\ncatalog: {{refresh_hours: 0}}\n" + text
                      if not text.startswith(("port:", "catalog:")) else text)
    served = _run(["serve", "--config", str(config)], tmp_path)
    checked = _run(["check-config", str(config)], tmp_path)
    assert served.returncode == 2 and checked.returncode == 2, (served, checked)
    serve_line = served.stderr.strip().splitlines()[-1]
    assert "Traceback" not in served.stderr + checked.stderr
    assert checked.stderr.strip() == serve_line, (checked.stderr, served.stderr)
    assert needle in serve_line


def test_readers_find_db_and_config_without_flags(tmp_path: Path) -> None:
    """`budgets` and `watch --once` with no flags: the user's config, its db; and say where they looked."""
    none = _run(["watch", "--once"], tmp_path)
    assert none.returncode == 2 and "looked at --db, $OPENROUTER_SPEND_DB" in none.stderr, none
    import sqlite3

    from proxy.store.sqlite import prepare

    db = tmp_path / "elsewhere.db"
    prepare(db)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO requests (id, started_at, finished_at, method, endpoint, streamed, status, outcome, cost_usd,"
                     " cost_source, is_free, duration_ms) VALUES ('r1', strftime('%Y-%m-%dT%H:%M:%fZ','now'),"
                     " strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'POST', 'chat/completions', 0, 200, 'ok', '1.25', 'reported', 0, 5)")
    user = tmp_path / ".config/openrouter-spend/config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text(f"db: {db}\nbudgets:\n  - {{name: daily, limit_usd: 5, period: day}}\n")
    budgets = _run(["budgets", "--format", "json"], tmp_path)
    assert budgets.returncode == 0, budgets.stderr
    assert '"spent_usd": "1.25"' in budgets.stdout
    watch = _run(["watch", "--once"], tmp_path)
    assert watch.returncode == 0 and "today $1.25" in watch.stdout, watch
    # The environment beats the config's db.
    empty = tmp_path / "empty.db"
    prepare(empty)
    assert "today $0.00" in _run(["watch", "--once"], tmp_path, OPENROUTER_SPEND_DB=str(empty)).stdout
