"""Real Prometheus and Alertmanager on free loopback ports, configured from config/*.yml, for tests.

Only what a test machine needs changes in the derived configs: scrape and alerting targets (loopback
instead of docker-compose service names), the bearer token file, and short intervals so alerts
arrive within seconds. Rules are used as shipped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"

# Debian installs Alertmanager as prometheus-alertmanager.
BINARIES = {
    "prometheus": ("prometheus",),
    "promtool": ("promtool",),
    "alertmanager": ("alertmanager", "prometheus-alertmanager"),
    "amtool": ("amtool",),
}


def find_binary(name: str) -> str | None:
    for candidate in BINARIES[name]:
        path = shutil.which(candidate)
        if path:
            return path
    return None


def missing_binaries(*names: str) -> list[str]:
    return [n for n in names if find_binary(n) is None]


def require_binaries(*names: str) -> None:
    """Skips loudly outside CI, fails in CI (env CI set), when a binary is missing."""
    import pytest

    missing = missing_binaries(*names)
    if not missing:
        return
    msg = (f"{', '.join(missing)} not on PATH: install Debian's prometheus and prometheus-alertmanager "
           "packages (`apt-get install prometheus prometheus-alertmanager`) to run this test")
    if os.environ.get("CI"):
        pytest.fail(msg + " (CI is set, so this cannot be skipped)")
    pytest.skip("NOT RUN: " + msg)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_config(
    targets: list[str],
    *,
    token_file: Path | None,
    alertmanager: str | None,
    rules_dir: Path,
    interval: str = "1s",
) -> dict[str, Any]:
    """config/prometheus.yml with loopback targets, `token_file` (or no auth) and short intervals."""
    cfg: dict[str, Any] = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    cfg["global"]["scrape_interval"] = interval
    cfg["global"]["evaluation_interval"] = interval
    cfg["rule_files"] = [str(rules_dir / Path(f).name) for f in cfg["rule_files"]]
    # The proxy's job, on loopback targets; the team profile's job finds replicas by Docker DNS.
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "openrouter-spend")
    cfg["scrape_configs"] = [job]
    job["static_configs"] = [{"targets": targets}]
    if token_file is None:
        job.pop("authorization", None)
    else:
        job["authorization"]["credentials_file"] = str(token_file)
    if alertmanager is None:
        cfg.pop("alerting", None)
    else:
        cfg["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    return cfg


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """config/alertmanager.yml with every webhook pointed at `webhook_url` and second-scale grouping."""
    cfg: dict[str, Any] = yaml.safe_load((CONFIG / "alertmanager.yml").read_text())
    for receiver in cfg["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url
    route = cfg["route"]
    route.update(group_wait="1s", group_interval="1s", repeat_interval="1m")
    return cfg


class Prometheus:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self._session = session

    async def api(self, path: str, **params: str) -> Any:
        async with self._session.get(f"{self.url}/api/v1/{path}", params=params) as r:
            body = await r.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query (at unix time `at`, default now); raises AssertionError with Prometheus' message
        when the expression is bad."""
        data = await (self.api("query", query=expr) if at is None else self.api("query", query=expr, time=str(at)))
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    async def query_range(self, expr: str, seconds: float = 60, step: str = "1s") -> list[dict[str, Any]]:
        now = time.time()
        data = await self.api("query_range", query=expr, start=str(now - seconds), end=str(now), step=step)
        return list(data["result"])

    async def wait_for_targets_up(self, timeout: float = 30) -> None:
        async def up() -> bool:
            targets = (await self.api("targets"))["activeTargets"]
            return bool(targets) and all(t["health"] == "up" for t in targets)

        await wait_until(up, timeout, "Prometheus to scrape every target successfully")

    async def wait_for_samples(self, expr: str, timeout: float = 30) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = []

        async def has() -> bool:
            nonlocal result
            result = await self.query(expr)
            return bool(result)

        await wait_until(has, timeout, f"data for {expr}")
        return result

    async def alerts(self) -> list[dict[str, Any]]:
        return list((await self.api("alerts"))["alerts"])

    async def rules(self) -> list[dict[str, Any]]:
        return [r for g in (await self.api("rules"))["groups"] for r in g["rules"]]


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    last: BaseException | None = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            if await check():
                return
        except (aiohttp.ClientError, AssertionError) as e:
            last = e
        await asyncio.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


@asynccontextmanager
async def _process(args: list[str], log: Path, *, env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> AsyncIterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=cwd)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


async def _wait_ready(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{log.stem} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            async with session.get(url) as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await wait_until(ready, 30, url)


@dataclass
class ProxyProcess:
    """`python -m proxy serve` as its own process; `proc.returncode` is set once the context has exited."""

    target: str  # host:port, what Prometheus scrapes
    url: str  # http://host:port
    db: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@asynccontextmanager
async def proxy_process(
    workdir: Path, config: dict[str, Any], *, port: int, upstream: str, env: dict[str, str] | None = None
) -> AsyncIterator[ProxyProcess]:
    """The real proxy serving `config` (a proxy YAML document) on 127.0.0.1:`port` until the context exits.

    It is stopped with SIGTERM, as docker stops it, so it drains its recorder before exiting.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "proxy.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    db = workdir / "usage.db"
    log = workdir / "proxy.log"
    args = [sys.executable, "-m", "proxy", "serve", "--config", str(cfg_path), "--host", "127.0.0.1",
            "--port", str(port), "--upstream", upstream, "--db", str(db)]
    # The checkout, not whatever version of the package happens to be installed.
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session, _process(args, log, env=full_env, cwd=workdir) as proc:
        await _wait_ready(session, f"{url}/healthz", proc, log)
        yield ProxyProcess(f"127.0.0.1:{port}", url, db, log, proc)


@asynccontextmanager
async def prometheus(
    workdir: Path,
    targets: list[str],
    *,
    token: str | None = None,
    alertmanager: str | None = None,
    interval: str = "1s",
) -> AsyncIterator[Prometheus]:
    """A running Prometheus scraping `targets` ("127.0.0.1:port") with config/alerts.rules.yml loaded."""
    binary = find_binary("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = None
    if token is not None:
        token_file = workdir / "metrics.token"
        token_file.write_text(token)
    rules_dir = workdir / "rules"
    rules_dir.mkdir(exist_ok=True)
    shutil.copy(CONFIG / "alerts.rules.yml", rules_dir / "alerts.rules.yml")
    cfg = prometheus_config(targets, token_file=token_file, alertmanager=alertmanager, rules_dir=rules_dir,
                            interval=interval)
    cfg_path = workdir / "prometheus.yml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "prometheus.log"
    args = [binary, f"--config.file={cfg_path}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    async with aiohttp.ClientSession() as session, _process(args, log) as proc:
        await _wait_ready(session, f"{url}/-/ready", proc, log)
        yield Prometheus(url, session)


@asynccontextmanager
async def alertmanager(workdir: Path, webhook_url: str) -> AsyncIterator[str]:
    """A running Alertmanager from config/alertmanager.yml delivering to `webhook_url`; yields host:port."""
    binary = find_binary("alertmanager")
    if binary is None:
        raise RuntimeError("alertmanager is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "alertmanager.yml"
    cfg_path.write_text(yaml.safe_dump(alertmanager_config(webhook_url), sort_keys=False))
    port = free_port()
    log = workdir / "alertmanager.log"
    # An empty cluster address turns off the HA gossip listener, which would need another port.
    args = [binary, f"--config.file={cfg_path}", f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"]
    async with aiohttp.ClientSession() as session, _process(args, log) as proc:
        await _wait_ready(session, f"http://127.0.0.1:{port}/-/ready", proc, log)
        yield f"127.0.0.1:{port}"


def webhook_receiver() -> tuple[web.Application, asyncio.Queue[dict[str, Any]]]:
    """An app taking Alertmanager's webhook POSTs at any path; each JSON payload lands in the queue."""
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        received.put_nowait(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    return app, received


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def substitute(expr: str, variables: dict[str, str] | None = None, *, range_: str = "1h",
               rate_interval: str = "1m") -> str:
    """Grafana's template variables replaced as Grafana would with `All` selected."""
    values = {"__rate_interval": rate_interval, "__range": range_, "__interval": "15s",
              "datasource": "openrouter-spend-prom", "key": ".*", "project": ".*", "session": ".*",
              "model": ".*", **(variables or {})}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


def rule_exprs() -> list[tuple[str, str]]:
    """(alert name, PromQL) for every rule in config/alerts.rules.yml."""
    doc = yaml.safe_load((CONFIG / "alerts.rules.yml").read_text())
    return [(r.get("alert") or r["record"], r["expr"]) for g in doc["groups"] for r in g["rules"]]
