"""Dashboards, alert rules, Prometheus/Alertmanager configs and docker-compose.yml agree with each other
and with proxy/metrics.py; the PromQL runs on a real Prometheus when the binaries are installed."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shutil
import subprocess
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.metrics import Metrics, metrics_handler
from proxy.store.records import BLOCKED, COST_REPORTED, OK, UsageRecord

from . import stack

ROOT = stack.ROOT
DASH_DIR = ROOT / "dashboards"
DASHBOARD = DASH_DIR / "openrouter-spend.json"
PROVISIONED_DS = DASH_DIR / "provisioning" / "datasources" / "prometheus.yml"
PROVISIONED_DASH = DASH_DIR / "provisioning" / "dashboards" / "dashboards.yml"
COMPOSE = ROOT / "docker-compose.yml"
RULES = stack.CONFIG / "alerts.rules.yml"
RULE_TESTS = stack.CONFIG / "alerts.rules.test.yml"
PANEL_TYPES = {"stat", "gauge", "timeseries", "bargauge", "table"}
ROWS = ["Spend", "Budgets", "Where the money goes", "Tokens and cache", "Requests and errors", "Latency",
        "Health of the numbers"]
METRIC_RE = re.compile(r"\bopenrouter_proxy_[a-z0-9_]+")


def load_dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def yaml_file(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in load_dashboard()["panels"] if p["type"] != "row"]


def exported_names() -> set[str]:
    """Every sample name Metrics can expose, from each family's type (labelled families have no samples yet)."""
    reg = CollectorRegistry()
    Metrics(reg)
    names: set[str] = set()
    for fam in reg.collect():
        if fam.type == "counter":
            names |= {fam.name + "_total", fam.name + "_created"}
        elif fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(fam.name)
    return names


# -- the dashboard ---------------------------------------------------------------------------------


def test_dashboard_json_is_what_build_py_writes() -> None:
    spec = importlib.util.spec_from_file_location("dashboard_build", DASH_DIR / "build.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert DASHBOARD.read_text() == build.render(), "run `python dashboards/build.py` and commit the JSON"


def test_dashboard_schema_and_template_variables() -> None:
    d = load_dashboard()
    assert d["schemaVersion"] >= 39
    assert d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert list(variables) == ["datasource", "key", "project", "session", "model"]
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("key", "project", "session", "model"):
        v = variables[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"] and v["allValue"] == ".*", name
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert re.fullmatch(rf"label_values\(openrouter_proxy_[a-z_]+, {name}\)", v["definition"]), name
        assert v["query"]["query"] == v["definition"]


def test_dashboard_datasource_uid_is_the_provisioned_one() -> None:
    (ds,) = yaml_file(PROVISIONED_DS)["datasources"]
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == ds["uid"] == "openrouter-spend-prom"
    assert ds["type"] == "prometheus"


def test_every_panel_has_title_description_unit_and_the_variable_datasource() -> None:
    seen_ids = set()
    for p in load_dashboard()["panels"]:
        assert p["id"] not in seen_ids
        seen_ids.add(p["id"])
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["type"] in PANEL_TYPES, p["type"]
        assert p["title"].strip() and len(p["description"]) > 20, p["title"]
        assert p["fieldConfig"]["defaults"]["unit"], p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"].strip(), p["title"]


def test_panels_follow_the_issue_order() -> None:
    d = load_dashboard()
    assert [p["title"] for p in d["panels"] if p["type"] == "row"] == ROWS
    titles = [p["title"] for p in d["panels"]]
    for earlier, later in [("Spend today", "Spend this week"), ("Spend this week", "Spend this month"),
                           ("Spend this month", "Burn rate ($/hour)"),
                           ("Burn rate ($/hour)", "Projected spend at month end"),
                           ("Spend by model ($/hour)", "Spend by project ($/hour)"),
                           ("Spend by project ($/hour)", "Spend by API key ($/hour)")]:
        assert titles.index(earlier) < titles.index(later)
    assert len(panels()) >= 30


def test_template_variables_are_only_used_as_regex_matchers() -> None:
    for title, expr in stack.dashboard_exprs(load_dashboard()):
        for name in ("key", "project", "session", "model"):
            uses = expr.count(f"${name}")
            assert uses == expr.count(f'{name}=~"${name}"'), (title, expr)


def test_substituted_filters_narrow_the_query() -> None:
    (title, expr) = stack.dashboard_exprs(load_dashboard())[0]
    narrowed = stack.substitute(expr, {"model": "(a/b|c/d)"})
    assert 'model=~"(a/b|c/d)"' in narrowed and 'key=~".*"' in narrowed and "$" not in narrowed


# -- metric names ----------------------------------------------------------------------------------


def test_every_metric_the_dashboard_and_rules_name_exists() -> None:
    names = exported_names()
    referenced: dict[str, str] = {}
    for title, expr in stack.dashboard_exprs(load_dashboard()):
        referenced.update({m: f"panel {title!r}" for m in METRIC_RE.findall(expr)})
    for v in load_dashboard()["templating"]["list"]:
        referenced.update({m: f"variable {v['name']}" for m in METRIC_RE.findall(v.get("definition", ""))})
    for alert, expr in stack.rule_exprs():
        referenced.update({m: f"rule {alert}" for m in METRIC_RE.findall(expr)})
    for test in yaml_file(RULE_TESTS)["tests"]:
        for series in test["input_series"]:
            referenced.update({m: f"rule test {test['name']!r}" for m in METRIC_RE.findall(series["series"])})
    assert len(referenced) > 20
    unknown = {m: where for m, where in referenced.items() if m not in names}
    assert not unknown, f"not exported by proxy/metrics.py: {unknown}"


def test_every_rule_has_a_unit_test_firing_and_not_firing() -> None:
    alerts = {name for name, _ in stack.rule_exprs()}
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in yaml_file(RULE_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            (fired if case["exp_alerts"] else quiet).add(case["alertname"])
    assert alerts == fired == quiet


# -- docker-compose.yml and provisioning ------------------------------------------------------------


def compose() -> dict[str, Any]:
    result: dict[str, Any] = yaml_file(COMPOSE)
    return result


def mounts(service: str) -> dict[str, str]:
    """Container path -> host path for bind mounts (named volumes map to their volume name)."""
    out = {}
    for v in compose()["services"][service].get("volumes", []):
        src, dst = v.split(":")[:2]
        out[dst] = src
    return out


def test_compose_bind_mounts_exist_and_named_volumes_are_declared() -> None:
    c = compose()
    for name, svc in c["services"].items():
        for dst, src in mounts(name).items():
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"
            else:
                assert src in c["volumes"], f"{name} uses undeclared volume {src}"
    assert mounts("proxy")["/data"] in c["volumes"]
    assert mounts("prometheus")["/prometheus"] in c["volumes"]


def test_compose_publishes_only_on_loopback_and_pins_images() -> None:
    c = compose()
    assert set(c["services"]) == {"proxy", "prometheus", "alertmanager", "grafana"} | TEAM
    for name, svc in c["services"].items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        image = svc["image"]
        assert re.search(r":v?\d+\.\d+(\.\d+)?(-alpine)?$", image), f"{name}: unpinned image {image}"
        assert svc["healthcheck"]["test"], name


def _container_port(service: str) -> int:
    (port,) = compose()["services"][service]["ports"]
    return int(port.rsplit(":", 1)[1])


def test_ports_and_paths_agree_between_compose_and_configs() -> None:
    c = compose()
    prom = yaml_file(stack.CONFIG / "prometheus.yml")
    job, _team = prom["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in c["services"] and int(port) == _container_port(host) == 8787
    (am,) = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = am.split(":")
    assert host == "alertmanager" and int(port) == _container_port("alertmanager")

    # Prometheus reads its config and rules where compose mounts them.
    pm = mounts("prometheus")
    cmd = c["services"]["prometheus"]["command"]
    config_file = next(a.split("=", 1)[1] for a in cmd if a.startswith("--config.file="))
    assert pm[config_file] == "./config/prometheus.yml"
    for rule_file in prom["rule_files"]:
        assert pm[str(Path(config_file).parent / rule_file)] == f"./config/{rule_file}"
    # The bearer token file is the compose secret.
    secret_path = job["authorization"]["credentials_file"]
    (secret,) = c["services"]["prometheus"]["secrets"]
    assert secret_path == f"/run/secrets/{secret}" and secret in c["secrets"]
    token_env = c["secrets"][secret]["environment"]
    assert token_env in c["services"]["proxy"]["environment"]

    am_cmd = c["services"]["alertmanager"]["command"]
    am_config = next(a.split("=", 1)[1] for a in am_cmd if a.startswith("--config.file="))
    assert mounts("alertmanager")[am_config] == "./config/alertmanager.yml"

    # Grafana: datasource URL, provisioning folders, dashboard folder, home dashboard.
    (ds,) = yaml_file(PROVISIONED_DS)["datasources"]
    assert ds["url"] == f"http://prometheus:{_container_port('prometheus')}"
    gm = mounts("grafana")
    assert gm["/etc/grafana/provisioning/datasources"] == "./dashboards/provisioning/datasources"
    assert gm["/etc/grafana/provisioning/dashboards"] == "./dashboards/provisioning/dashboards"
    (provider,) = yaml_file(PROVISIONED_DASH)["providers"]
    dash_dir = provider["options"]["path"]
    in_dir = [dst for dst in gm if dst.startswith(dash_dir + "/") and dst.endswith(".json")]
    assert [gm[d] for d in in_dir] == ["./dashboards/openrouter-spend.json"]
    env = c["services"]["grafana"]["environment"]
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] in in_dir
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "GF_ADMIN_PASSWORD" in env["GF_SECURITY_ADMIN_PASSWORD"]
    assert "OPENROUTER_API_KEY" in c["services"]["proxy"]["environment"]


TEAM = {"postgres", "proxy-a", "proxy-b", "balancer"}
REPLICAS = ("proxy-a", "proxy-b")


def test_team_profile_is_postgres_two_replicas_and_a_balancer_and_nothing_else() -> None:
    c = compose()
    for name, svc in c["services"].items():
        assert svc.get("profiles", []) == (["team"] if name in TEAM else []), name
    # Only the balancer is published; replicas and the database stay on the compose network.
    assert [name for name in TEAM if c["services"][name].get("ports")] == ["balancer"]
    assert mounts("postgres")["/var/lib/postgresql/data"] in c["volumes"]
    for name in TEAM:
        assert c["services"][name]["healthcheck"]["test"], name


def test_team_replicas_share_one_database_config_and_alias() -> None:
    from proxy.config import load_config

    c = compose()
    a, b = (c["services"][name] for name in REPLICAS)
    assert a == b  # one definition: the replicas differ only in name
    assert a["build"] == "." and a["image"] == c["services"]["proxy"]["image"]
    # The image's default command names a SQLite file with --db; a replica's must not.
    assert a["command"][0] == "serve" and "--db" not in a["command"]
    config_path = a["command"][a["command"].index("--config") + 1]
    assert mounts("proxy-a")[config_path] == "./config/proxy.team.yaml"
    cfg = load_config(stack.CONFIG / "proxy.team.yaml")
    assert cfg.db_url is not None and cfg.db_password_env in a["environment"]
    url = re.fullmatch(r"postgresql://(\w+)@([\w-]+):(\d+)/(\w+)", cfg.db_url)
    assert url is not None, cfg.db_url
    user, host, port, dbname = url.groups()
    pg = c["services"][host]
    assert int(port) == 5432 and pg["environment"]["POSTGRES_USER"] == user and pg["environment"]["POSTGRES_DB"] == dbname
    # The database's password and the replicas' come from the same variable.
    assert cfg.db_password_env in pg["environment"]["POSTGRES_PASSWORD"]
    assert a["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert cfg.metrics.token_env in a["environment"] and cfg.host == "0.0.0.0"
    assert any(spec.action == "block" for spec in cfg.budgets)

    # Prometheus finds each replica by the alias both carry, on the port they serve.
    (alias,) = a["networks"]["default"]["aliases"]
    prom = yaml_file(stack.CONFIG / "prometheus.yml")
    solo, team = prom["scrape_configs"]
    assert team["job_name"] == "openrouter-spend-team"
    (sd,) = team["dns_sd_configs"]
    assert sd["names"] == [alias] and sd["type"] == "A" and sd["port"] == cfg.port
    assert team["authorization"] == solo["authorization"] and team["metrics_path"] == solo["metrics_path"]
    # Both proxy jobs count as the proxy for the down alert.
    (down,) = [expr for alert, expr in stack.rule_exprs() if alert == "OpenRouterProxyDown"]
    assert solo["job_name"] in down and team["job_name"] in down


def test_team_balancer_streams_unbuffered_to_both_replicas() -> None:
    c = compose()
    lb = c["services"]["balancer"]
    conf_path = next(dst for dst, src in mounts("balancer").items() if src == "./config/nginx.team.conf")
    assert conf_path == "/etc/nginx/nginx.conf" and lb["image"].startswith("nginx:")
    text = (stack.CONFIG / "nginx.team.conf").read_text()
    directives = [line.split("#")[0].strip().rstrip(";") for line in text.splitlines()]
    directives = [d for d in directives if d]
    cfg_port = yaml_file(stack.CONFIG / "proxy.team.yaml")["port"]
    servers = {d.split()[1] for d in directives if d.startswith("server ") and ":" in d}
    assert servers == {f"{name}:{cfg_port}" for name in REPLICAS}
    # Streams must reach the client as they arrive (an SSE event buffered is an agent stalled).
    for needed in ("proxy_buffering off", "proxy_request_buffering off", "proxy_http_version 1.1",
                   'proxy_set_header Connection ""', "proxy_pass http://replicas"):
        assert needed in directives, needed
    timeout = next(d for d in directives if d.startswith("proxy_read_timeout"))
    assert int(timeout.split()[1].rstrip("s")) >= 600
    # nginx passes a POST to the other replica only if it never reached the first (no double billing).
    assert "proxy_next_upstream error timeout" in directives
    listen = next(d for d in directives if d.startswith("listen"))
    (port,) = lb["ports"]
    assert port.startswith("127.0.0.1:") and int(port.rsplit(":", 1)[1]) == int(listen.split()[1])
    assert {name for name in lb["depends_on"]} == set(REPLICAS)
    body = int(next(d for d in directives if d.startswith("client_max_body_size")).split()[1].rstrip("m"))
    assert body >= yaml_file(stack.CONFIG / "proxy.team.yaml").get("max_body_mb", 32)


def test_dockerfile_serves_on_the_port_and_paths_compose_expects() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.12-slim$", text, re.M)
    assert "EXPOSE 8787" in text and "/healthz" in text and "HEALTHCHECK" in text
    assert '"--host", "0.0.0.0"' in text and "/data/openrouter-spend.db" in text
    assert compose()["services"]["proxy"]["build"] == "."
    assert mounts("proxy")["/data"] == "proxy-data"
    config_path = "/etc/openrouter-spend/proxy.yaml"
    assert f'"--config", "{config_path}"' in text
    assert f"COPY config/proxy.docker.yaml {config_path}" in text
    assert mounts("proxy")[config_path] == "./config/proxy.docker.yaml"
    proxy_cfg = yaml_file(stack.CONFIG / "proxy.docker.yaml")
    assert proxy_cfg["port"] == _container_port("proxy") and proxy_cfg["host"] == "0.0.0.0"
    assert proxy_cfg["metrics"]["token_env"] == compose()["secrets"]["metrics_token"]["environment"]


def test_docker_proxy_config_loads() -> None:
    from proxy.config import load_config

    cfg = load_config(stack.CONFIG / "proxy.docker.yaml")
    assert cfg.metrics.token_env == "OPENROUTER_SPEND_METRICS_TOKEN" and cfg.metrics.port is None


# -- promtool and amtool ----------------------------------------------------------------------------


def _run(*args: str) -> str:
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(args)} failed:\n{out}"
    return out


def test_promtool_check_config_and_rules(tmp_path: Path) -> None:
    stack.require_binaries("promtool")
    promtool = stack.find_binary("promtool")
    assert promtool
    # promtool insists the bearer token file exists; /run/secrets/ only exists inside the container.
    text = (stack.CONFIG / "prometheus.yml").read_text()
    assert "/run/secrets/metrics_token" in text
    (tmp_path / "token").write_text("t")
    (tmp_path / "prometheus.yml").write_text(text.replace("/run/secrets/metrics_token", str(tmp_path / "token")))
    shutil.copy(RULES, tmp_path / "alerts.rules.yml")
    assert "SUCCESS" in _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert "SUCCESS: 9 rules found" in _run(promtool, "check", "rules", str(RULES))


def test_promtool_test_rules() -> None:
    stack.require_binaries("promtool")
    promtool = stack.find_binary("promtool")
    assert promtool
    assert "SUCCESS" in _run(promtool, "test", "rules", str(RULE_TESTS))


def test_amtool_check_config() -> None:
    stack.require_binaries("amtool")
    amtool = stack.find_binary("amtool")
    assert amtool
    assert "SUCCESS" in _run(amtool, "check-config", str(stack.CONFIG / "alertmanager.yml"))


# -- real Prometheus and Alertmanager over a Metrics-only server -------------------------------------

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def rec(i: int, **kw: Any) -> UsageRecord:
    now = datetime.now(timezone.utc)  # today, so "Spend today" counts it
    base: dict[str, Any] = dict(
        id=f"r{i}", started_at=now, finished_at=now, method="POST", endpoint="/api/v1/chat/completions",
        model_requested="anthropic/claude-sonnet-4", model="anthropic/claude-sonnet-4", provider="Anthropic",
        generation_id=f"gen-{i}", key_fingerprint="fp-abc", key_alias="laptop", project="acme",
        session=f"s{i % 3}", client="claude-code", streamed=True, status=200, outcome=OK, error=None,
        input_tokens=1000 + i, output_tokens=200, cached_tokens=800, cache_write_tokens=100, reasoning_tokens=50,
        web_search_requests=None, cost_usd=Decimal("0.0123"), cost_reported_usd=Decimal("0.0123"),
        cost_catalog_usd=Decimal("0.0100"), cost_source=COST_REPORTED, is_free=False, is_byok=False,
        ttfb_ms=300.0 + i, duration_ms=4000.0 + i,
    )
    base.update(kw)
    return UsageRecord(**base)


def traffic(m: Metrics, start: int) -> None:
    for i in range(start, start + 20):
        m.observe(rec(i), cache_savings_usd=Decimal("0.002"), reasoning_cost_usd=Decimal("0.0005"),
                  output_cost_usd=Decimal("0.003"))
        m.observe(rec(i, model="openai/gpt-5", provider="OpenAI", project="", session="", key_alias=None,
                      endpoint="/api/v1/responses", cost_usd=Decimal("0.02"), cost_reported_usd=None),
                  output_cost_usd=Decimal("0.01"))
        m.observe(rec(i, model="meta-llama/llama-3.3-70b-instruct:free", is_free=True, cost_usd=Decimal("0")))
        m.observe_overhead(0.0003 + i / 1e5)
    m.observe(rec(start + 99, status=402, outcome=BLOCKED, cost_usd=Decimal("0")))
    m.budget_blocked("daily")
    m.upstream_error("http_5xx")
    m.upstream_error("timeout")
    m.recorder_rows(60)


def populated_metrics(reg: CollectorRegistry) -> Metrics:
    m = Metrics(reg)
    m.set_catalog(321, datetime.now(timezone.utc).timestamp() - 3600)
    m.set_free_daily_limit(50)
    m.set_recorder_depth_source(lambda: 3)
    m.in_flight.inc()
    m.set_budget_warn_ratio("daily", 0.5)
    m.set_budget("daily", "total", Decimal("1.20"), Decimal("5"), T0.timestamp() + 86400, Decimal("2.5"))
    traffic(m, 0)
    _reconcile_gauges(m)
    return m


def _reconcile_gauges(m: Metrics) -> None:
    """What serve's periodic GET /key comparison exports: $0.25 today that the log never saw."""
    from proxy.pricing.reconcile import compare_key, parse_key
    from proxy.store.activity import Recorded

    key = parse_key({"data": {"usage_daily": 1.25, "usage_weekly": 3, "usage_monthly": 9}})
    ours = {w: Recorded(Decimal(v), None, 10, 0) for w, v in (("day", "1"), ("week", "2.75"), ("month", "8.75"))}
    m.set_reconcile(compare_key(key, ours, Decimal("0.01")), datetime.now(timezone.utc).timestamp())


async def _metrics_server(aiohttp_server: Any, reg: CollectorRegistry, token: str) -> str:
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(reg, token))
    server = await aiohttp_server(app, host="127.0.0.1")
    return f"127.0.0.1:{server.port}"


@pytest.mark.timeout(120)
async def test_every_dashboard_and_rule_query_runs_on_real_prometheus(aiohttp_server: Any, tmp_path: Path) -> None:
    stack.require_binaries("prometheus")
    reg = CollectorRegistry()
    m = populated_metrics(reg)
    target = await _metrics_server(aiohttp_server, reg, "tok")
    async with stack.prometheus(tmp_path / "prom", [target], token="tok") as prom:
        await prom.wait_for_targets_up()
        await prom.wait_for_samples("openrouter_proxy_cost_usd_total")
        traffic(m, 100)  # a second helping, so rates and increases are above zero
        m.recorder_dropped()  # after the first scrape saw 0, so increase() sees it
        await prom.wait_for_samples("sum(openrouter_proxy_recorder_rows_total) >= 120")
        await asyncio.sleep(2.5)

        empty = []
        for title, expr in stack.dashboard_exprs(load_dashboard()):
            q = stack.substitute(expr)
            result = await prom.query(q)
            if not result or all(r["value"][1] == "NaN" for r in result):
                empty.append((title, q))
        assert not empty, f"panels without data: {empty}"

        spent = await prom.query(stack.substitute(stack.dashboard_exprs(load_dashboard())[0][1]))
        # Spend today is the proxy's exact sum: 40 requests at $0.0123 and 40 at $0.02.
        assert abs(float(spent[0]["value"][1]) - 40 * (0.0123 + 0.02)) < 1e-9

        narrowed = stack.substitute(
            'sum by (session) (increase(openrouter_proxy_cost_usd_total{session=~"$session"}[$__range]))',
            {"session": "(s1|s2)"},
        )
        assert {r["metric"]["session"] for r in await prom.query(narrowed)} == {"s1", "s2"}

        for alert, expr in stack.rule_exprs():
            await prom.query(expr)  # parses and evaluates
            for metric in set(METRIC_RE.findall(expr)) | ({"up"} if "up{" in expr else set()):
                assert await prom.query(metric), f"{alert}: no series for {metric}"
        firing = {a["labels"]["alertname"] for a in await prom.alerts()}
        assert "OpenRouterBudgetWarning" not in firing
        assert "OpenRouterRecordsDropped" in firing


@pytest.mark.timeout(120)
async def test_budget_alert_reaches_webhook_through_alertmanager(aiohttp_server: Any, tmp_path: Path) -> None:
    stack.require_binaries("prometheus", "alertmanager")
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.set_budget_warn_ratio("daily", 0.5)
    m.set_budget("daily", "total", Decimal("0.001"), Decimal("0.01"), T0.timestamp(), Decimal("0.002"))
    target = await _metrics_server(aiohttp_server, reg, "tok")
    receiver_app, received = stack.webhook_receiver()
    receiver = await aiohttp_server(receiver_app, host="127.0.0.1")
    async with stack.alertmanager(tmp_path / "am", f"http://127.0.0.1:{receiver.port}/hook") as am, \
            stack.prometheus(tmp_path / "prom", [target], token="tok", alertmanager=am) as prom:
        await prom.wait_for_targets_up()
        await asyncio.sleep(3)
        assert received.empty(), "no alert may fire while the budget is at 10%"
        m.set_budget("daily", "total", Decimal("0.0102"), Decimal("0.01"), T0.timestamp(), Decimal("0.02"))

        names: set[str] = set()
        payload: dict[str, Any] = {}
        deadline = asyncio.get_running_loop().time() + 60
        while "OpenRouterBudgetSpent" not in names:
            timeout = deadline - asyncio.get_running_loop().time()
            payload = await asyncio.wait_for(received.get(), max(timeout, 0.1))
            names |= {a["labels"]["alertname"] for a in payload["alerts"] if a["status"] == "firing"}
        (alert,) = [a for a in payload["alerts"] if a["labels"]["alertname"] == "OpenRouterBudgetSpent"]
        assert alert["labels"]["budget"] == "daily" and alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["summary"] == "Budget daily (total) is spent: $0.01"
        assert payload["receiver"] == "webhook"


@pytest.mark.timeout(120)
async def test_two_replicas_read_as_one_proxy_on_every_dashboard_query(aiohttp_server: Any, tmp_path: Path) -> None:
    """The team profile: two replicas each export their own traffic and the same shared budget.
    Every panel sums or maxes `instance` away: spend adds up, the budget shows once, not doubled."""
    stack.require_binaries("prometheus")
    registries = [CollectorRegistry(), CollectorRegistry()]
    replicas = [populated_metrics(reg) for reg in registries]
    targets = [await _metrics_server(aiohttp_server, reg, "tok") for reg in registries]
    async with stack.prometheus(tmp_path / "prom", targets, token="tok") as prom:
        await prom.wait_for_targets_up()
        await prom.wait_for_samples("count(openrouter_proxy_cost_usd_total) > 0")
        for m in replicas:
            traffic(m, 100)
        await prom.wait_for_samples("sum(openrouter_proxy_recorder_rows_total) >= 240")
        await asyncio.sleep(2.5)
        per_instance = []
        for title, expr in stack.dashboard_exprs(load_dashboard()):
            for series in await prom.query(stack.substitute(expr)):
                if "instance" in series["metric"]:
                    per_instance.append((title, expr))
        assert not per_instance, f"panels that show one series per replica: {per_instance}"
        exprs = dict(stack.dashboard_exprs(load_dashboard()))
        [today] = await prom.query(stack.substitute(exprs["Spend today"]))
        assert abs(float(today["value"][1]) - 2 * 40 * (0.0123 + 0.02)) < 1e-9  # both replicas' traffic
        [used] = await prom.query(stack.substitute(exprs["Budget used (share of limit)"]))
        assert float(used["value"][1]) == pytest.approx(1.2 / 5)  # one budget, not two, not doubled
