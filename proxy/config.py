"""load_config(path) -> Config: yaml.safe_load, then frozen dataclasses validated by hand.

Every error names the key's path (`timeouts.read_s: expected a positive number, got 'x'`) so
`check-config` and `serve` can print it as one line. Secrets never live here: the YAML only
names environment variables.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from proxy.errors import ConfigError, shown
from proxy.pricing.hints import WEB_RESULT_USD

DEFAULT_UPSTREAM = "https://openrouter.ai/api/v1"


@dataclass(frozen=True, slots=True)
class KeyAlias:
    """A friendly name for a key: matched by the key read from `key_env`, or by its fingerprint."""

    alias: str
    key_env: str | None = None
    fingerprint: str | None = None
    # Plain SHA-256 of the key (`printf %s "$KEY" | sha256sum`): names a proxy key in managed
    # mode without putting the key itself in the file.
    key_sha256: str | None = None
    project: str | None = None


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    # None serves /metrics on the proxy's own port.
    port: int | None = None
    host: str | None = None
    token_env: str | None = None
    session_cap: int = 50
    project_cap: int = 50


@dataclass(frozen=True, slots=True)
class ReconcileConfig:
    """`serve`'s periodic comparison of GET /key with the log; None minutes means off."""

    interval_minutes: float | None = None
    # The key to check; default the managed key in managed mode, else OPENROUTER_API_KEY.
    key_env: str | None = None


@dataclass(frozen=True, slots=True)
class UiConfig:
    """The built-in page and its /-/ JSON endpoints."""

    enabled: bool = True
    # Off loopback the page needs this token (or the metrics token, or a proxy key in managed mode).
    token_env: str | None = None
    # Host names the page answers besides loopback names and IP literals (DNS rebinding).
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The /-/admin/ API (keys and budgets at runtime): off unless `token_env` names its token."""

    token_env: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8787
    upstream: str = DEFAULT_UPSTREAM
    # Extra CA certificates (PEM) trusted for the upstream's TLS besides the system's (and besides
    # $SSL_CERT_FILE / $SSL_CERT_DIR, which replace the system's): a corporate proxy's private root.
    upstream_ca_file: Path | None = None
    db: Path = Path("openrouter-spend.db")
    # A postgresql:// URL (never with a password) selects PostgreSQL instead of the SQLite file `db`;
    # the password comes from the variable named by db_password_env, else PGPASSWORD or ~/.pgpass.
    db_url: str | None = None
    db_password_env: str | None = None
    # While the last write to the database failed: "serve" keeps answering (rows are held and
    # written once it is back); "block" refuses billed calls with a 503 instead.
    storage_on_unavailable: str = "serve"
    # Budgets shared through the database: holds of a process not heard from for this long stop counting.
    budget_lease_s: float = 30.0
    # Processes serving one port (`serve --workers N`); more than one shares budgets through the database.
    workers: int = 1
    # Anthropic's API takes at most 32 MB a request and agents send 1-11 MB: a larger body would be
    # refused upstream anyway, and every MiB allowed is memory a client can make the proxy hold.
    max_body_bytes: int = 32 * 1024 * 1024
    # All request bodies held at once (each is kept for its whole exchange); past it, 503.
    max_buffered_bytes: int = 256 * 1024 * 1024
    # A request body may not go silent for longer than this, nor arrive slower on average than
    # body_min_rate (bytes/s) once this grace has passed; else 408 and the connection is closed.
    body_idle_timeout_s: float = 10.0
    body_min_rate: float = 64 * 1024
    # Whether the file or a flag named `db`: only then does it beat $OPENROUTER_SPEND_DB and the
    # per-user default (proxy/cli/locate.py).
    db_given: bool = False
    connect_timeout_s: float = 10.0
    # Reasoning models think for minutes before the first byte; clients wait 10 min.
    first_byte_timeout_s: float = 900.0
    read_timeout_s: float = 900.0
    shutdown_grace_s: float = 30.0
    catalog_refresh_s: float = 6 * 3600.0
    catalog_file: Path | None = None
    # USD per web-plugin result (`:online`); OpenRouter's documented $4 per 1,000 results.
    web_search_result_usd: Decimal = WEB_RESULT_USD
    free_daily_limit: int = 50
    timezone: str = "UTC"
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    keys: tuple[KeyAlias, ...] = ()
    # Managed-key mode: the proxy holds the OpenRouter key (read from this environment variable)
    # and clients must present one of `keys`; their own keys are never forwarded.
    managed_key_env: str | None = None
    budgets: tuple[Any, ...] = ()
    alerts: tuple[Any, ...] = ()
    log_level: str = "info"
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    # Host names (besides localhost and loopback addresses) the proxy's own pages (/metrics,
    # /healthz) answer to while it listens on loopback without a metrics token: anything else is a
    # DNS-rebinding page that resolved its own name to 127.0.0.1.
    allowed_hosts: tuple[str, ...] = ()
    # retention.raw_days: raw request rows older than this are deleted (their totals stay in the
    # hourly rollup, so reports stay exact); None keeps every row.
    retention_raw_days: int | None = None
    # One line per finished request on stderr (`serve --quiet` turns it off too).
    access_log: bool = True
    # Waits before each GET /generation for a stream cut before its usage (not a YAML key:
    # OpenRouter's lag sets them; tests shorten them).
    backfill_delays_s: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the file (optional), apply CLI overrides on top, validate everything."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    return parse_config(raw)


def parse_config(raw: Any) -> Config:
    data = _section(raw, "", _TOP_KEYS)
    timeouts = _section(
        data.get("timeouts", {}), "timeouts", {"connect_s", "first_byte_s", "read_s", "body_idle_s", "body_min_kib_s"}
    )
    catalog = _section(data.get("catalog", {}), "catalog", {"refresh_hours", "file", "web_search_result_usd"})
    defaults = Config()
    refresh_hours = _number(catalog.get("refresh_hours", 6), "catalog.refresh_hours", minimum=0)
    db = _db(data.get("db", str(defaults.db)))
    db_url = db if db.startswith(POSTGRES_SCHEMES) else None
    config = Config(
        host=_string(data.get("host", defaults.host), "host"),
        port=_port(data.get("port", defaults.port), "port"),
        upstream=_upstream(data.get("upstream", defaults.upstream)),
        upstream_ca_file=Path(_string(data["upstream_ca_file"], "upstream_ca_file")) if data.get("upstream_ca_file") is not None else None,
        db=defaults.db if db_url else Path(db),
        db_url=db_url,
        db_password_env=_string(data["db_password_env"], "db_password_env") if data.get("db_password_env") is not None else None,
        max_body_bytes=int(_number(data.get("max_body_mb", 32), "max_body_mb", positive=True) * 1024 * 1024),
        max_buffered_bytes=int(_number(data.get("max_buffered_mb", 256), "max_buffered_mb", positive=True) * 1024 * 1024),
        body_idle_timeout_s=_number(timeouts.get("body_idle_s", defaults.body_idle_timeout_s), "timeouts.body_idle_s", positive=True),
        body_min_rate=_number(timeouts.get("body_min_kib_s", 64), "timeouts.body_min_kib_s", positive=True) * 1024,
        db_given=data.get("db") is not None,
        connect_timeout_s=_number(timeouts.get("connect_s", defaults.connect_timeout_s), "timeouts.connect_s", positive=True),
        first_byte_timeout_s=_number(
            timeouts.get("first_byte_s", defaults.first_byte_timeout_s), "timeouts.first_byte_s", positive=True
        ),
        read_timeout_s=_number(timeouts.get("read_s", defaults.read_timeout_s), "timeouts.read_s", positive=True),
        shutdown_grace_s=_number(data.get("shutdown_grace_s", defaults.shutdown_grace_s), "shutdown_grace_s", minimum=0),
        catalog_refresh_s=refresh_hours * 3600,
        catalog_file=Path(_string(catalog["file"], "catalog.file")) if catalog.get("file") is not None else None,
        web_search_result_usd=Decimal(
            str(_number(catalog.get("web_search_result_usd", float(WEB_RESULT_USD)), "catalog.web_search_result_usd", minimum=0))
        ),
        free_daily_limit=_integer(data.get("free_daily_limit", defaults.free_daily_limit), "free_daily_limit", minimum=0),
        timezone=_timezone(data.get("timezone", defaults.timezone)),
        metrics=_metrics(data.get("metrics", {})),
        ui=_ui(data.get("ui", {})),
        keys=_keys(data.get("keys", [])),
        managed_key_env=_string(data["managed_key_env"], "managed_key_env") if data.get("managed_key_env") is not None else None,
        log_level=_choice(data.get("log_level", "info"), "log_level", ("debug", "info", "warning", "error")),
        reconcile=_reconcile(data.get("reconcile", {})),
        allowed_hosts=_hosts(data.get("allowed_hosts", [])),
        retention_raw_days=_retention(data.get("retention", {})),
        access_log=_flag(data.get("access_log", True), "access_log"),
        storage_on_unavailable=_choice(
            _section(data.get("storage", {}), "storage", {"on_unavailable", "budget_lease_s"}).get("on_unavailable", "serve"),
            "storage.on_unavailable",
            ("serve", "block"),
        ),
        budget_lease_s=_number(
            (data.get("storage") or {}).get("budget_lease_s", defaults.budget_lease_s), "storage.budget_lease_s", positive=True
        ),
        admin=_admin(data.get("admin", {})),
    )
    # Managed mode without `keys:` is allowed: proxy keys can be made at runtime (`keys create`),
    # and until one exists every request gets 401.
    return _with_budgets_and_alerts(config, data)


_TOP_KEYS = {
    "host",
    "port",
    "upstream",
    "upstream_ca_file",
    "db",
    "db_password_env",
    "max_body_mb",
    "max_buffered_mb",
    "timeouts",
    "shutdown_grace_s",
    "catalog",
    "free_daily_limit",
    "timezone",
    "metrics",
    "ui",
    "keys",
    "managed_key_env",
    "budgets",
    "alerts",
    "log_level",
    "reconcile",
    "allowed_hosts",
    "retention",
    "access_log",
    "storage",
    "admin",
}


def _retention(raw: Any) -> int | None:
    section = _section(raw, "retention", {"raw_days"})
    if section.get("raw_days") is None:
        return None
    return _integer(section["raw_days"], "retention.raw_days", minimum=1)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _db(value: Any) -> str:
    db = _string(value, "db")
    if db.startswith(POSTGRES_SCHEMES):
        try:
            parts = urlsplit(db)
            parts.port
        except ValueError as exc:
            raise ConfigError(f"db: not a valid postgresql:// URL ({exc})") from None
        if parts.password is not None:
            # A password in the URL would show in `ps`, shell history and logs.
            raise ConfigError("db: no password in the URL; set PGPASSWORD, use ~/.pgpass, or name a variable in db_password_env")
    return db


def _with_budgets_and_alerts(config: Config, data: dict[str, Any]) -> Config:
    budgets: tuple[Any, ...] = ()
    alerts: tuple[Any, ...] = ()
    if data.get("budgets"):
        from proxy.budgets.spec import parse_budgets

        budgets = tuple(parse_budgets(data["budgets"], "budgets"))
    if data.get("alerts"):
        from proxy.budgets.alerts import parse_channels

        alerts = tuple(parse_channels(data["alerts"], "alerts"))
    return dataclasses.replace(config, budgets=budgets, alerts=alerts)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem}") from None
    return {} if raw is None else raw


def _section(raw: Any, path: str, known: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {shown(raw)}")
    for key in raw:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(known))})")
    return raw



def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: expected a non-empty string, got {shown(value)}")
    return value


def _number(value: Any, path: str, *, positive: bool = False, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{path}: expected a number, got {shown(value)}")
    if positive and value <= 0:
        raise ConfigError(f"{path}: expected a positive number, got {shown(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{path}: expected a number >= {minimum:g}, got {shown(value)}")
    return float(value)


def _integer(value: Any, path: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected a whole number, got {shown(value)}")
    if value < minimum:
        raise ConfigError(f"{path}: expected a whole number >= {minimum}, got {value}")
    return value


def _flag(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, got {shown(value)}")
    return value


def _port(value: Any, path: str) -> int:
    port = _integer(value, path, minimum=0)
    if port > 65535:
        raise ConfigError(f"{path}: expected a port number 0-65535, got {port}")
    return port


def _choice(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{path}: expected one of {', '.join(choices)}, got {shown(value)}")
    return str(value)


def _upstream(value: Any) -> str:
    text = _string(value, "upstream")
    # urllib, not yarl: the config loader sits on `statusline`'s fast import path.
    from urllib.parse import urlsplit

    try:
        url = urlsplit(text)
        scheme, host = url.scheme, url.hostname
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        scheme, host = "", None
    if scheme not in ("http", "https") or not host:
        raise ConfigError(f"upstream: expected an http(s) URL such as {DEFAULT_UPSTREAM}, got {shown(value)}")
    return text.rstrip("/")


def _timezone(value: Any) -> str:
    name = _string(value, "timezone")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"timezone: unknown time zone {shown(value)} (use an IANA name such as Europe/Berlin)") from None
    return name


def _metrics(raw: Any) -> MetricsConfig:
    data = _section(raw, "metrics", {"enabled", "port", "host", "token_env", "session_cap", "project_cap"})
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"metrics.enabled: expected true or false, got {shown(enabled)}")
    return MetricsConfig(
        enabled=enabled,
        port=_port(data["port"], "metrics.port") if data.get("port") is not None else None,
        host=_string(data["host"], "metrics.host") if data.get("host") is not None else None,
        token_env=_string(data["token_env"], "metrics.token_env") if data.get("token_env") is not None else None,
        session_cap=_integer(data.get("session_cap", 50), "metrics.session_cap", minimum=1),
        project_cap=_integer(data.get("project_cap", 50), "metrics.project_cap", minimum=1),
    )


def _hosts(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"allowed_hosts: expected a list of host names, got {shown(raw)}")
    hosts = []
    for index, item in enumerate(raw):
        name = _string(item, f"allowed_hosts[{index}]").strip().lower().rstrip(".")
        if not re.fullmatch(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]", name):
            raise ConfigError(f"allowed_hosts[{index}]: expected a host name without port or scheme, got {shown(item)}")
        hosts.append(name.strip("[]"))
    return tuple(hosts)


def _ui(raw: Any) -> UiConfig:
    data = _section(raw, "ui", {"enabled", "token_env", "hosts"})
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"ui.enabled: expected true or false, got {shown(enabled)}")
    hosts = data.get("hosts", [])
    if not isinstance(hosts, list):
        raise ConfigError(f"ui.hosts: expected a list of host names, got {shown(hosts)}")
    return UiConfig(
        enabled=enabled,
        token_env=_string(data["token_env"], "ui.token_env") if data.get("token_env") is not None else None,
        hosts=tuple(_string(h, f"ui.hosts[{i}]").lower() for i, h in enumerate(hosts)),
    )


def _keys(raw: Any) -> tuple[KeyAlias, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"keys: expected a list, got {shown(raw)}")
    keys = []
    for index, item in enumerate(raw):
        path = f"keys[{index}]"
        data = _section(item, path, {"alias", "key_env", "fingerprint", "key_sha256", "project"})
        if "alias" not in data:
            raise ConfigError(f"{path}.alias: missing")
        if sum(name in data for name in ("key_env", "fingerprint", "key_sha256")) != 1:
            raise ConfigError(f"{path}: give exactly one of key_env, fingerprint or key_sha256")
        if "key_sha256" in data and not re.fullmatch(r"[0-9a-f]{64}", str(data["key_sha256"])):
            raise ConfigError(f"{path}.key_sha256: expected 64 lowercase hex digits (printf %s \"$KEY\" | sha256sum)")
        keys.append(
            KeyAlias(
                alias=_string(data["alias"], f"{path}.alias"),
                key_env=_string(data["key_env"], f"{path}.key_env") if "key_env" in data else None,
                fingerprint=_string(data["fingerprint"], f"{path}.fingerprint") if "fingerprint" in data else None,
                key_sha256=data.get("key_sha256"),
                project=_string(data["project"], f"{path}.project") if "project" in data else None,
            )
        )
    return tuple(keys)


def _admin(raw: Any) -> AdminConfig:
    data = _section(raw, "admin", {"token_env"})
    return AdminConfig(token_env=_string(data["token_env"], "admin.token_env") if data.get("token_env") is not None else None)


def _reconcile(raw: Any) -> ReconcileConfig:
    data = _section(raw, "reconcile", {"interval_minutes", "key_env"})
    minutes = data.get("interval_minutes")
    return ReconcileConfig(
        interval_minutes=_number(minutes, "reconcile.interval_minutes", positive=True) if minutes is not None else None,
        key_env=_string(data["key_env"], "reconcile.key_env") if data.get("key_env") is not None else None,
    )
