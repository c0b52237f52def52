"""Proxy keys and budgets made at runtime: the `proxy_keys` and `runtime_budgets` tables, read and written.

A key is shown once, when made, and stored only as SHA-256 of the database's fingerprint salt and
the key (so its first 16 hex digits are the fingerprint its requests are logged under). Every write
bumps `meta.runtime_version` in the same transaction: a running proxy polls that one value and
reloads only when it moved. Writers use their own short-lived connection (the CLI's, or the admin
API's in a thread), never the recorder's, so they cannot land inside its batch transaction.
Both engines: the writers take a connection from proxy/store/reader.py's `open_writer`, the
poller reads through the Store.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiosqlite

from proxy.budgets.spec import BudgetSpec, parse_budgets, window
from proxy.errors import ConfigError
from proxy.store.engine import Store, as_store
from proxy.store.reader import Reader, open_writer, transaction
from proxy.store.sqlite import encode_time

KEY_PREFIX = "sk-spend-"
# Budgets made for a key are named after it; `budgets set` may not use the prefix.
KEY_BUDGET_PREFIX = "key:"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_BUMP = (
    "INSERT INTO meta (key, value) VALUES ('runtime_version', '1') "
    "ON CONFLICT(key) DO UPDATE SET value = CAST(CAST(meta.value AS INTEGER) + 1 AS TEXT)"
)


class NameTaken(ConfigError):
    """The name is a config alias or budget, or a key of that name exists: refused, never replaced."""


@dataclass(frozen=True, slots=True)
class RuntimeKey:
    name: str
    key_hash: str
    project: str | None
    budget: str | None  # as given: "20/month"
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def live(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class RuntimeState:
    keys: tuple[RuntimeKey, ...]
    budgets: tuple[BudgetSpec, ...]
    # Budgets stored but unusable (a config change made them invalid), by name: logged, not applied.
    broken: tuple[str, ...] = ()


# ---------------------------------------------------------------- pure


def check_name(name: str, what: str = "name") -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{what}: expected 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit), got {name!r}")
    return name


def parse_duration(text: str, what: str = "--expires") -> timedelta:
    m = _DURATION.fullmatch(text.strip())
    if not m or int(m.group(1)) <= 0:
        raise ConfigError(f"{what}: expected a duration such as 30d, 12h, 45m or 90s, got {text!r}")
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


def key_budget(name: str, budget: str) -> BudgetSpec:
    """A key's `--budget 20/month` as a budget of its own: that key's spend only, blocking."""
    amount, sep, period = budget.partition("/")
    if not sep:
        raise ConfigError(f"--budget: expected <usd>/<period> such as 20/month or 5/rolling:5h, got {budget!r}")
    try:
        (spec,) = parse_budgets(
            [{"name": KEY_BUDGET_PREFIX + name, "limit_usd": amount.strip().lstrip("$"), "period": period.strip(), "match": {"key": name}}],
            "--budget",
        )
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("--budget[0].limit_usd", "--budget").replace("--budget[0].period", "--budget")) from None
    return spec


def budget_from_fields(name: str, fields: dict[str, Any]) -> BudgetSpec:
    """A budget as `budgets set` or PUT /-/admin/budgets/NAME gives it, checked like a config budget."""
    check_name(name)
    (spec,) = parse_budgets([{**fields, "name": name}], f"budgets.{name}")
    return spec


def spec_fields(spec: BudgetSpec) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "limit_usd": format(spec.limit_usd, "f"),
        "period": spec.period_label,
        "scope": spec.scope,
        "action": spec.action,
        "warn_at": [format(w, "f") for w in spec.warn_at],
    }
    if spec.match:
        fields["match"] = dict(spec.match)
    return fields


def key_hash(key: str, salt: bytes) -> str:
    return hashlib.sha256(salt + key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_budgets(keys: tuple[RuntimeKey, ...], now: datetime) -> tuple[BudgetSpec, ...]:
    specs = []
    for key in keys:
        if key.budget and key.live(now):
            try:
                specs.append(key_budget(key.name, key.budget))
            except ConfigError:
                continue  # checked when made; nothing stored by us can fail here
    return tuple(specs)


# ---------------------------------------------------------------- synchronous (CLI, admin API thread)


def connect(db: Path | str, password_env: str | None = None) -> Reader:
    """A read-write connection for one command: creates and migrates the database if needed."""
    return open_writer(db, password_env)


def salt_sync(db: Reader) -> bytes:
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('fingerprint_salt', ?)", (secrets.token_bytes(16).hex(),))
    return bytes.fromhex(db.execute("SELECT value FROM meta WHERE key = 'fingerprint_salt'").fetchone()[0])


def _write(db: Reader, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
    changed = 0
    with transaction(db):
        for sql, params in statements:
            changed += db.execute(sql, params).rowcount
        if changed:
            db.execute(_BUMP)
    return changed


def create_key(
    db: Reader,
    name: str,
    now: datetime,
    *,
    project: str | None = None,
    budget: str | None = None,
    expires_at: datetime | None = None,
    reserved_names: frozenset[str] = frozenset(),
) -> str:
    """Make a key and return it; only its salted hash is stored. Refuses a name already used."""
    check_name(name)
    if project is not None:
        check_name(project, "--project")
    if budget is not None:
        key_budget(name, budget)
    if name in reserved_names:
        raise NameTaken(f"name: {name!r} is already a key alias in the config")
    if db.execute("SELECT 1 FROM proxy_keys WHERE name = ?", (name,)).fetchone():
        raise NameTaken(f"name: a key named {name!r} exists already (revoked keys keep their name)")
    key = new_key()
    _write(
        db,
        [(
            "INSERT INTO proxy_keys (name, key_hash, project, budget, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
            (name, key_hash(key, salt_sync(db)), project, budget, encode_time(now), encode_time(expires_at) if expires_at else None),
        )],
    )
    return key


def revoke_key(db: Reader, name: str, now: datetime) -> bool:
    return _write(db, [("UPDATE proxy_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (encode_time(now), name))]) > 0


def set_budget(db: Reader, spec: BudgetSpec, now: datetime, *, reserved_names: frozenset[str] = frozenset()) -> None:
    if spec.name in reserved_names:
        raise NameTaken(f"name: {spec.name!r} is a budget in the config; pick another name")
    if spec.name.startswith(KEY_BUDGET_PREFIX):
        raise ConfigError(f"name: {KEY_BUDGET_PREFIX}* names are the budgets of keys (keys create --budget)")
    _write(
        db,
        [(
            "INSERT INTO runtime_budgets (name, spec, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
            (spec.name, json.dumps(spec_fields(spec)), encode_time(now)),
        )],
    )


def delete_budget(db: Reader, name: str) -> bool:
    return _write(db, [("DELETE FROM runtime_budgets WHERE name = ?", (name,))]) > 0


def read_state(db: Reader) -> RuntimeState:
    return _state(db.execute(_KEYS_QUERY).fetchall(), db.execute(_BUDGETS_QUERY).fetchall())


def describe_keys(db: Reader, tz: ZoneInfo, now: datetime) -> list[dict[str, Any]]:
    """What `keys list` and GET /-/admin/keys show: never the key, nor its hash.

    `spent_usd` is the spend in the key's budget window when it has a budget, else since it was made.
    """
    entries = []
    for key in read_state(db).keys:
        since = key.created_at
        if key.budget:
            spec = key_budget(key.name, key.budget)
            since = max(since, window(spec, now, tz)[0].astimezone(UTC))
        spent = sum(
            (Decimal(r[0]) for r in db.execute(
                "SELECT cost_usd FROM requests WHERE key_alias = ? AND started_at >= ? AND cost_usd IS NOT NULL",
                (key.name, encode_time(since)),
            )),
            Decimal(0),
        )
        used = db.execute("SELECT MAX(started_at) FROM requests WHERE key_alias = ?", (key.name,)).fetchone()[0]
        entries.append({
            "name": key.name,
            "project": key.project,
            "budget": key.budget,
            "spent_usd": format(spent, "f"),
            "last_used": _time(used).isoformat() if used else None,
            "created_at": key.created_at.isoformat(),
            "expires_at": key.expires_at.isoformat() if key.expires_at else None,
            "status": "revoked" if key.revoked_at else ("expired" if not key.live(now) else "live"),
        })
    return entries


# ---------------------------------------------------------------- async, through the Store (the proxy's poller)


async def read_version(db: Store | aiosqlite.Connection) -> int:
    rows = await as_store(db).fetch("SELECT value FROM meta WHERE key = 'runtime_version'")
    return int(rows[0][0]) if rows else 0


async def read_state_async(db: Store | aiosqlite.Connection) -> RuntimeState:
    store = as_store(db)
    return _state(await store.fetch(_KEYS_QUERY), await store.fetch(_BUDGETS_QUERY))


_KEYS_QUERY = "SELECT name, key_hash, project, budget, created_at, expires_at, revoked_at FROM proxy_keys ORDER BY name"
_BUDGETS_QUERY = "SELECT name, spec FROM runtime_budgets ORDER BY name"


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=UTC)


def _state(key_rows: Any, budget_rows: Any) -> RuntimeState:
    keys = tuple(
        RuntimeKey(
            name=name, key_hash=hashed, project=project, budget=budget, created_at=_time(created),
            expires_at=_time(expires) if expires else None, revoked_at=_time(revoked) if revoked else None,
        )
        for name, hashed, project, budget, created, expires, revoked in key_rows
    )
    specs, broken = [], []
    for name, text in budget_rows:
        try:
            specs.append(budget_from_fields(name, json.loads(text)))
        except (ConfigError, ValueError):
            broken.append(name)
    return RuntimeState(keys, tuple(specs), tuple(broken))
