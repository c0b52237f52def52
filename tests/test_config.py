"""load_config: defaults, every key's bad value named by its path, unknown keys, YAML errors as one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from proxy.config import DEFAULT_UPSTREAM, Config, KeyAlias, MetricsConfig, load_config, parse_config
from proxy.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "config" / "proxy.example.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    config = load_config(None)
    assert config == Config()
    assert (config.host, config.port, config.upstream) == ("127.0.0.1", 8787, DEFAULT_UPSTREAM)
    assert config.db == Path("openrouter-spend.db")
    assert config.max_body_bytes == 32 * 1024 * 1024
    assert config.metrics == MetricsConfig()
    assert config.keys == () and config.budgets == () and config.alerts == ()


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_empty_file_is_the_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text)) == Config()


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE)
    assert isinstance(config, Config)


def test_every_value_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
host: 0.0.0.0
port: 9000
upstream: http://127.0.0.1:9999/api/v1/
db: /tmp/x.db
max_body_mb: 2
timeouts: {connect_s: 3, first_byte_s: 60, read_s: 120.5}
shutdown_grace_s: 0
catalog: {refresh_hours: 0.5, file: models.json}
free_daily_limit: 1000
timezone: Europe/Berlin
metrics: {enabled: false, port: 9100, host: 127.0.0.1, token_env: METRICS_TOKEN, session_cap: 5, project_cap: 6}
keys:
  - {alias: ci, key_env: CI_KEY, project: builds}
  - {alias: laptop, fingerprint: 0123456789abcdef}
log_level: debug
"""))
    assert config.host == "0.0.0.0" and config.port == 9000
    assert config.upstream == "http://127.0.0.1:9999/api/v1"
    assert config.db == Path("/tmp/x.db")
    assert config.max_body_bytes == 2 * 1024 * 1024
    assert (config.connect_timeout_s, config.first_byte_timeout_s, config.read_timeout_s) == (3.0, 60.0, 120.5)
    assert config.shutdown_grace_s == 0
    assert config.catalog_refresh_s == 1800 and config.catalog_file == Path("models.json")
    assert config.free_daily_limit == 1000 and config.timezone == "Europe/Berlin"
    assert config.tz.key == "Europe/Berlin"
    assert config.metrics == MetricsConfig(enabled=False, port=9100, host="127.0.0.1", token_env="METRICS_TOKEN",
                                           session_cap=5, project_cap=6)
    assert config.keys[0] == KeyAlias(alias="ci", key_env="CI_KEY", project="builds")
    assert config.keys[1].alias == "laptop" and config.keys[1].fingerprint == "0123456789abcdef"
    assert config.log_level == "debug"


def test_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 9000\nhost: 0.0.0.0\n")
    config = load_config(path, {"port": 9001, "host": None, "db": "y.db"})
    assert (config.port, config.host, config.db) == (9001, "0.0.0.0", Path("y.db"))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"hots": "x"}, "hots: unknown key"),
        ({"timeouts": {"read": 5}}, "timeouts.read: unknown key"),
        ({"catalog": {"url": "x"}}, "catalog.url: unknown key"),
        ({"metrics": {"tokenenv": "x"}}, "metrics.tokenenv: unknown key"),
        ({"keys": [{"alias": "a", "key_env": "K", "colour": "red"}]}, "keys[0].colour: unknown key"),
        ({"host": ""}, "host: expected a non-empty string"),
        ({"host": 5}, "host: expected a non-empty string, got 5"),
        ({"port": "8787"}, "port: expected a whole number, got '8787'"),
        ({"port": 70000}, "port: expected a port number 0-65535, got 70000"),
        ({"port": -1}, "port: expected a whole number >= 0"),
        ({"port": True}, "port: expected a whole number, got True"),
        ({"port": 80.5}, "port: expected a whole number"),
        ({"upstream": "ftp://openrouter.ai"}, "upstream: expected an http(s) URL"),
        ({"upstream": "openrouter.ai/api/v1"}, "upstream: expected an http(s) URL"),
        ({"upstream": "http://"}, "upstream: expected an http(s) URL"),
        ({"upstream": 5}, "upstream: expected a non-empty string"),
        ({"db": ""}, "db: expected a non-empty string"),
        ({"db": ["a"]}, "db: expected a non-empty string"),
        ({"max_body_mb": "ten"}, "max_body_mb: expected a number, got 'ten'"),
        ({"max_body_mb": 0}, "max_body_mb: expected a positive number"),
        ({"max_body_mb": -1}, "max_body_mb: expected a positive number"),
        ({"timeouts": "fast"}, "timeouts: expected a mapping, got 'fast'"),
        ({"timeouts": {"connect_s": "x"}}, "timeouts.connect_s: expected a number, got 'x'"),
        ({"timeouts": {"first_byte_s": 0}}, "timeouts.first_byte_s: expected a positive number"),
        ({"timeouts": {"read_s": False}}, "timeouts.read_s: expected a number, got False"),
        ({"shutdown_grace_s": -1}, "shutdown_grace_s: expected a number >= 0"),
        ({"catalog": {"refresh_hours": -1}}, "catalog.refresh_hours: expected a number >= 0"),
        ({"catalog": {"file": 5}}, "catalog.file: expected a non-empty string"),
        ({"catalog": []}, "catalog: expected a mapping"),
        ({"free_daily_limit": 1.5}, "free_daily_limit: expected a whole number"),
        ({"free_daily_limit": -1}, "free_daily_limit: expected a whole number >= 0"),
        ({"timezone": "Mars/Olympus"}, "timezone: unknown time zone 'Mars/Olympus'"),
        ({"timezone": "../../etc/passwd"}, "timezone: unknown time zone"),
        ({"timezone": 1}, "timezone: expected a non-empty string"),
        ({"metrics": "on"}, "metrics: expected a mapping"),
        ({"metrics": {"enabled": "yes"}}, "metrics.enabled: expected true or false, got 'yes'"),
        ({"metrics": {"port": 99999}}, "metrics.port: expected a port number"),
        ({"metrics": {"host": ""}}, "metrics.host: expected a non-empty string"),
        ({"metrics": {"token_env": 5}}, "metrics.token_env: expected a non-empty string"),
        ({"metrics": {"session_cap": 0}}, "metrics.session_cap: expected a whole number >= 1"),
        ({"metrics": {"project_cap": "x"}}, "metrics.project_cap: expected a whole number"),
        ({"keys": {"alias": "a"}}, "keys: expected a list"),
        ({"keys": ["a"]}, "keys[0]: expected a mapping, got 'a'"),
        ({"keys": [{"key_env": "K"}]}, "keys[0].alias: missing"),
        ({"keys": [{"alias": "a"}]}, "keys[0]: give exactly one of"),
        ({"keys": [{"alias": "a", "key_env": "K", "fingerprint": "f"}]}, "keys[0]: give exactly one of"),
        ({"keys": [{"alias": "", "key_env": "K"}]}, "keys[0].alias: expected a non-empty string"),
        ({"keys": [{"alias": "a", "key_env": "K"}, {"alias": "b", "key_env": 3}]}, "keys[1].key_env: expected a non-empty string"),
        ({"keys": [{"alias": "a", "fingerprint": "f", "project": 7}]}, "keys[0].project: expected a non-empty string"),
        ({"log_level": "loud"}, "log_level: expected one of debug, info, warning, error, got 'loud'"),
        ({"budgets": "ten dollars"}, "budgets: expected a list"),
        ({"budgets": [{"name": "d", "limit_usd": "ten"}]}, "budgets[0].limit_usd"),
        ({"alerts": [{"type": "pager"}]}, "alerts[0].type"),
        ([1, 2], "config: expected a mapping"),
        ("text", "config: expected a mapping"),
    ],
)
def test_bad_values_name_their_path(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_long_bad_values_are_shortened() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"host": ["x" * 500]})
    assert len(str(caught.value)) < 120


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"max_body_mb": float("inf")}, "max_body_mb"),
        ({"max_body_mb": float("nan")}, "max_body_mb"),
        ({"timeouts": {"read_s": float("nan")}}, "timeouts.read_s"),
        ({"timeouts": {"connect_s": float("inf")}}, "timeouts.connect_s"),
    ],
)
def test_non_finite_numbers_are_config_errors(raw: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert str(caught.value).startswith(path + ":")


@pytest.mark.parametrize(
    "text",
    [
        "port: [8787\n",
        "host: 127.0.0.1\n  port: 8787\n",
        "a: b: c\n",
        "keys:\n- alias: a\n key_env: K\n",
        "\tport: 1\n",
        "port: 'unterminated\n",
    ],
)
def test_yaml_syntax_error_is_one_line_naming_the_file_and_line(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:")
    assert " line " in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")
    assert str(caught.value).startswith(f"{tmp_path / 'nope.yaml'}: cannot read")


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00port: 1")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:") and "\n" not in str(caught.value)


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    path = write(tmp_path, "host: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_safe_load_is_what_parses() -> None:
    # A YAML mapping with a non-string key still gets a named error, not a TypeError.
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_load("1: x\n"))
    assert str(caught.value).startswith("1: unknown key")


def test_allowed_hosts() -> None:
    assert parse_config({"allowed_hosts": ["Spend.Internal.", "[::1]"]}).allowed_hosts == ("spend.internal", "::1")
    for bad, message in (
        ("x", r"^allowed_hosts: expected a list of host names"),
        (["http://a"], r"^allowed_hosts\[0\]: expected a host name without port or scheme"),
        (["a:80"], r"^allowed_hosts\[0\]: expected a host name without port or scheme"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config({"allowed_hosts": bad})
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"retention": {"raw_days": 0}}, "retention.raw_days: expected a whole number >= 1"),
        ({"retention": {"raw_days": "90"}}, "retention.raw_days: expected a whole number"),
        ({"retention": {"days": 90}}, "retention.days: unknown key"),
        ({"retention": 90}, "retention: expected a mapping"),
    ],
)
def test_bad_retention(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_retention_is_off_by_default_and_read() -> None:
    assert parse_config({}).retention_raw_days is None
    assert parse_config({"retention": {"raw_days": None}}).retention_raw_days is None
    assert parse_config({"retention": {"raw_days": 90}}).retention_raw_days == 90
