"""proxy/store/keys.py: the pure parsers and the synchronous writers the CLI and the admin API share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from proxy.errors import ConfigError
from proxy.server.attribution import fingerprint
from proxy.store import keys as store
from proxy.store.sqlite import encode_time

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "limit", "period", "rolling"),
    [("20/month", "20", "month", None), ("$5/day", "5", "day", None), ("0.5 / week", "0.5", "week", None), ("3/rolling:5h", "3", "rolling", 18000)],
)
def test_key_budget(text: str, limit: str, period: str, rolling: int | None) -> None:
    spec = store.key_budget("alice", text)
    assert (spec.name, spec.limit_usd, spec.period, spec.rolling_seconds) == ("key:alice", Decimal(limit), period, rolling)
    assert spec.scope == "total" and spec.match == (("key", "alice"),) and spec.action == "block"


@pytest.mark.parametrize("text", ["20", "twenty/month", "20/year", "-1/day", "0/day", "20/"])
def test_key_budget_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="^--budget"):
        store.key_budget("alice", text)


def test_durations_and_names() -> None:
    assert store.parse_duration("30d") == timedelta(days=30)
    assert store.parse_duration("90s") == timedelta(seconds=90)
    for bad in ("30", "0d", "1y", "-5m", ""):
        with pytest.raises(ConfigError, match="^--expires"):
            store.parse_duration(bad)
    for bad in ("a b", "key:x", "*", "-x", "x" * 65, ""):
        with pytest.raises(ConfigError, match="^name"):
            store.check_name(bad)


def _version(db: Any) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'runtime_version'").fetchone()
    return int(row[0]) if row else 0


def test_only_the_salted_hash_is_stored_and_each_change_bumps_the_version(db_target: Path | str) -> None:
    db = store.connect(db_target)
    key = store.create_key(db, "alice", NOW, project="acme", budget="1/day", expires_at=NOW + timedelta(days=1))
    salt = store.salt_sync(db)
    (row,) = db.execute("SELECT * FROM proxy_keys").fetchall()
    assert key not in repr(row) and row[1] == store.key_hash(key, salt)
    # The logged fingerprint of the key is the first 16 digits of the stored hash.
    assert fingerprint(key, salt) == row[1][:16]
    assert _version(db) == 1
    with pytest.raises(store.NameTaken):
        store.create_key(db, "alice", NOW)
    with pytest.raises(store.NameTaken):
        store.create_key(db, "bob", NOW, reserved_names=frozenset({"bob"}))
    assert store.revoke_key(db, "alice", NOW) and _version(db) == 2
    assert not store.revoke_key(db, "alice", NOW) and _version(db) == 2  # nothing changed, nothing to reload
    spec = store.budget_from_fields("cap", {"limit_usd": "2", "period": "week", "match": {"model": "anthropic/*"}})
    store.set_budget(db, spec, NOW)
    store.set_budget(db, spec, NOW)
    assert _version(db) == 4
    with pytest.raises(store.NameTaken):
        store.set_budget(db, store.budget_from_fields("daily", {"limit_usd": 1}), NOW, reserved_names=frozenset({"daily"}))
    state = store.read_state(db)
    assert state.budgets == (spec,) and [k.name for k in state.keys] == ["alice"] and not state.keys[0].live(NOW)
    assert store.delete_budget(db, "cap") and not store.delete_budget(db, "cap")
    db.close()


def test_describe_keys_counts_spend_in_the_budget_window(db_target: Path | str) -> None:
    db = store.connect(db_target)
    store.create_key(db, "alice", NOW - timedelta(days=3), budget="1/day")
    store.create_key(db, "bob", NOW - timedelta(days=3))
    columns = "id, started_at, finished_at, method, endpoint, key_alias, streamed, status, outcome, cost_usd, cost_source, is_free, duration_ms"
    for i, (who, when, cost) in enumerate([("alice", NOW - timedelta(days=1), "0.5"), ("alice", NOW - timedelta(hours=1), "0.25"), ("bob", NOW - timedelta(days=2), "0.1")]):
        stamp = encode_time(when)
        db.execute(f"INSERT INTO requests ({columns}) VALUES (?, ?, ?, 'POST', 'chat', ?, ?, 200, 'ok', ?, 'reported', ?, 1)", (str(i), stamp, stamp, who, 0, cost, 0))
    entries = {e["name"]: e for e in store.describe_keys(db, ZoneInfo("UTC"), NOW)}
    assert entries["alice"]["spent_usd"] == "0.25"  # today only: the budget is per day
    assert entries["bob"]["spent_usd"] == "0.1"  # no budget: since the key was made
    assert entries["alice"]["last_used"] == (NOW - timedelta(hours=1)).isoformat()
    assert all("key" not in e and "key_hash" not in e for e in entries.values())
    db.close()
