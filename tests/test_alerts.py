from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal as D
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.budgets.alerts import ChannelSpec, Notifier, body_for, event_env, event_payload, parse_channels
from proxy.budgets.ledger import AlertEvent
from proxy.errors import ConfigError

BERLIN = ZoneInfo("Europe/Berlin")
ServerFactory = Callable[..., Awaitable[TestServer]]

EVENT = AlertEvent(
    budget="daily",
    scope="total",
    scope_value="",
    kind="warn",
    threshold=D("0.5"),
    spent_usd=D("0.006"),
    limit_usd=D("0.01"),
    window_start=datetime(2026, 11, 27, tzinfo=BERLIN),
    window_end=datetime(2026, 11, 28, tzinfo=BERLIN),
    message="openrouter-spend: budget 'daily' is at 60% ($0.006 of $0.01 today), past the 50% warning",
)
SPENT = AlertEvent(
    "daily", "total", "", "spent", D("1"), D("0.012"), D("0.01"), EVENT.window_start, EVENT.window_end, "budget 'daily' is spent"
)


# ---------------------------------------------------------------- config


def test_parse_channels() -> None:
    raw = [
        {"type": "log"},
        {"type": "webhook", "url": "http://127.0.0.1:9/hook", "kinds": ["spent"]},
        {"type": "slack", "url_env": "SLACK_WEBHOOK_URL", "name": "team"},
        {"type": "discord", "url_env": "DISCORD_URL", "timeout_s": 3},
        {"type": "command", "argv": ["notify-send", "openrouter-spend"]},
        {"type": "webhook", "url": "https://example.org/b"},
    ]
    got = parse_channels(raw)
    assert got == (
        ChannelSpec("log", "log", "alerts[0]"),
        ChannelSpec("webhook", "webhook", "alerts[1]", url="http://127.0.0.1:9/hook", kinds=("spent",)),
        ChannelSpec("slack", "team", "alerts[2]", url_env="SLACK_WEBHOOK_URL"),
        ChannelSpec("discord", "discord", "alerts[3]", url_env="DISCORD_URL", timeout_s=3.0),
        ChannelSpec("command", "command", "alerts[4]", argv=("notify-send", "openrouter-spend")),
        ChannelSpec("webhook", "webhook-5", "alerts[5]", url="https://example.org/b"),
    )
    assert parse_channels(None) == ()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"type": "log"}, "alerts: expected a list of channels, got a mapping"),
        (["log"], "alerts[0]: expected a mapping, got 'log'"),
        ([{"type": "email"}], "alerts[0].type: expected one of log, webhook, slack, discord, command, got 'email'"),
        ([{}], "alerts[0].type: expected one of"),
        ([{"type": "log", "url": "http://x"}], "alerts[0].url: unknown key for a log channel"),
        ([{"type": "slack"}], "alerts[0]: give exactly one of url or url_env"),
        ([{"type": "slack", "url": "http://a", "url_env": "B"}], "alerts[0]: give exactly one of url or url_env"),
        ([{"type": "webhook", "url": "ftp://secret"}], "alerts[0].url: expected an http:// or https:// URL"),
        ([{"type": "discord", "url_env": 3}], "alerts[0].url_env: expected the name of an environment variable, got 3"),
        ([{"type": "command", "argv": "notify-send hi"}], "alerts[0].argv: expected a non-empty list of strings"),
        ([{"type": "command", "argv": []}], "alerts[0].argv: expected a non-empty list of strings"),
        ([{"type": "command", "argv": ["x"], "append_message": "yes"}], "alerts[0].append_message: expected true or false"),
        ([{"type": "log", "kinds": ["warn", "panic"]}], "alerts[0].kinds: expected a list drawn from warn, spent, projected"),
        ([{"type": "log", "kinds": []}], "alerts[0].kinds: expected a list drawn from"),
        ([{"type": "slack", "url": "http://a", "timeout_s": 0}], "alerts[0].timeout_s: expected a positive number of seconds, got 0"),
        ([{"type": "log", "name": "a"}, {"type": "log", "name": "a"}], "alerts[1].name: duplicate channel name 'a'"),
    ],
)
def test_parse_errors_name_the_path(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_channels(raw)
    assert str(exc.value).startswith(message)
    assert "secret" not in str(exc.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [({}, "alerts[0].url_env: environment variable HOOK is not set"), ({"HOOK": "nope"}, "does not hold an http")],
)
def test_missing_url_env_is_a_config_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Notifier(parse_channels([{"type": "slack", "url_env": "HOOK"}]), None, environ=environ)


# ---------------------------------------------------------------- bodies


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("slack", {"text": EVENT.message}),
        ("discord", {"content": EVENT.message, "allowed_mentions": {"parse": []}}),
        (
            "webhook",
            {
                "source": "openrouter-spend",
                "budget": "daily",
                "scope": "total",
                "scope_value": "",
                "kind": "warn",
                "threshold": "0.5",
                "spent_usd": "0.006",
                "limit_usd": "0.01",
                "projected_usd": None,
                "window_start": "2026-11-27T00:00:00+01:00",
                "window_end": "2026-11-28T00:00:00+01:00",
                "message": EVENT.message,
            },
        ),
    ],
)
def test_bodies(kind: str, body: dict[str, Any]) -> None:
    assert body_for(ChannelSpec(kind, kind, "alerts[0]", url="http://x"), EVENT) == body


def test_discord_content_is_cut_to_its_limit() -> None:
    long = replace(EVENT, message="x" * 3000)
    assert body_for(ChannelSpec("discord", "d", "alerts[0]", url="http://x"), long)["content"] == "x" * 2000


def test_a_session_named_everyone_pings_nobody() -> None:
    # Session and project names come from clients and end up in the message.
    hostile = replace(EVENT, message="budget 'per-session' is spent for session @everyone <!channel> <@U1> @here a&b")
    discord = body_for(ChannelSpec("discord", "d", "alerts[0]", url="http://x"), hostile)
    assert discord["allowed_mentions"] == {"parse": []}
    slack = body_for(ChannelSpec("slack", "s", "alerts[0]", url="http://x"), hostile)["text"]
    assert "<" not in slack and ">" not in slack
    assert "&lt;!channel&gt;" in slack and "&lt;@U1&gt;" in slack and "a&amp;b" in slack
    for word in ("@everyone", "@here", "@channel"):
        assert word not in slack
    assert "@\u200beveryone" in slack and "@\u200bhere" in slack


def test_event_env() -> None:
    env = event_env(EVENT)
    assert env["OPENROUTER_SPEND_BUDGET"] == "daily"
    assert env["OPENROUTER_SPEND_KIND"] == "warn"
    assert env["OPENROUTER_SPEND_PROJECTED_USD"] == ""
    assert env["OPENROUTER_SPEND_MESSAGE"] == EVENT.message
    assert set(env) == {f"OPENROUTER_SPEND_{k.upper()}" for k in event_payload(EVENT) if k != "source"}


# ---------------------------------------------------------------- delivery


class Receiver:
    """A webhook receiver on loopback that fails the first `failures` posts with `fail_status`."""

    def __init__(self, failures: int = 0, fail_status: int = 500, stall_s: float = 0) -> None:
        self.failures = failures
        self.fail_status = fail_status
        self.stall_s = stall_s
        self.hits = 0
        self.bodies: list[Any] = []
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        if self.hits <= self.failures:
            return web.Response(status=self.fail_status, text="nope")
        self.bodies.append(await request.json())
        self.got.set()
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook/{secret}", self.handle)
        return app


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def started(notifier: Notifier) -> asyncio.Task[None]:
    task = asyncio.create_task(notifier.run(), name="alerts")
    await asyncio.sleep(0)
    return task


@pytest.mark.parametrize(
    ("kind", "body"),
    [("slack", {"text": EVENT.message}), ("discord", {"content": EVENT.message, "allowed_mentions": {"parse": []}}), ("webhook", event_payload(EVENT))],
)
async def test_webhook_shapes_arrive(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, kind: str, body: dict[str, Any]
) -> None:
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    notifier = Notifier(parse_channels([{"type": kind, "url": str(server.make_url("/hook/s3cret"))}]), session)
    task = await started(notifier)
    notifier.notify(EVENT)
    await asyncio.wait_for(receiver.got.wait(), 5)
    await notifier.close()
    assert task.done()
    assert receiver.bodies == [body]


async def test_retries_with_backoff_until_the_receiver_recovers(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "proxy.budgets.alerts")
    receiver = Receiver(failures=2)
    server = await aiohttp_server(receiver.app())
    url = str(server.make_url("/hook/s3cret"))
    notifier = Notifier(parse_channels([{"type": "webhook", "url": url}]), session, backoff_s=0.05)
    await started(notifier)
    loop = asyncio.get_running_loop()
    began = loop.time()
    notifier.notify(EVENT)
    await asyncio.wait_for(receiver.got.wait(), 5)
    assert loop.time() - began >= 0.05 + 0.1  # backoff doubles: 0.05 s, then 0.1 s
    await notifier.close()
    assert receiver.hits == 3
    assert receiver.bodies == [event_payload(EVENT)]
    assert "alert delivery failed channel=webhook budget=daily attempt=2 reason=status=500" in caplog.text
    assert "alert sent channel=webhook budget=daily kind=warn attempt=3" in caplog.text
    assert "s3cret" not in caplog.text


@pytest.mark.parametrize(("status", "hits"), [(500, 3), (429, 3), (404, 1)])
async def test_gives_up_after_bounded_attempts_or_on_client_errors(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, status: int, hits: int
) -> None:
    receiver = Receiver(failures=99, fail_status=status)
    server = await aiohttp_server(receiver.app())
    channels = parse_channels([{"type": "slack", "url_env": "HOOK"}])
    notifier = Notifier(channels, session, attempts=3, backoff_s=0.01, environ={"HOOK": str(server.make_url("/hook/s3cret"))})
    await started(notifier)
    notifier.notify(EVENT)
    await notifier.close()
    assert receiver.hits == hits
    assert "alert not sent channel=slack budget=daily kind=warn" in caplog.text
    assert "s3cret" not in caplog.text


async def test_unreachable_receiver_logs_the_error_class_not_the_url(caplog: pytest.LogCaptureFixture) -> None:
    # A port nothing listens on: bind one, note it, close it.
    probe = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    channels = parse_channels([{"type": "webhook", "url": f"http://127.0.0.1:{port}/hook/s3cret"}])
    notifier = Notifier(channels, None, attempts=2, backoff_s=0.01)  # no session given: it makes its own
    await started(notifier)
    notifier.notify(EVENT)
    await notifier.close()
    assert "reason=ClientConnectorError" in caplog.text
    assert "s3cret" not in caplog.text


async def test_command_channel_runs_a_real_command(tmp_path: Path) -> None:
    out = tmp_path / "alert.txt"
    code = "import os, sys; open(sys.argv[1], 'w').write(os.environ['OPENROUTER_SPEND_KIND'] + '|' + sys.argv[2])"
    notifier = Notifier(parse_channels([{"type": "command", "argv": [sys.executable, "-c", code, str(out)]}]), None)
    await started(notifier)
    notifier.notify(EVENT)
    await notifier.close()
    assert out.read_text() == "warn|" + EVENT.message


async def test_command_channel_gets_a_minimal_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-v1-" + "5" * 64)
    monkeypatch.setenv("METRICS_TOKEN", "t0ken")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    out = tmp_path / "env.json"
    code = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
    notifier = Notifier(parse_channels([{"type": "command", "argv": [sys.executable, "-c", code, str(out)], "append_message": False}]), None)
    await started(notifier)
    notifier.notify(EVENT)
    await notifier.close()
    env = json.loads(out.read_text())
    assert "OPENROUTER_API_KEY" not in env and "METRICS_TOKEN" not in env
    assert "t0ken" not in json.dumps(env) and "5" * 64 not in json.dumps(env)
    assert env["PATH"] == os.environ["PATH"] and env["LC_ALL"] == "C.UTF-8" and env["TZ"] == "Europe/Berlin"
    assert env["OPENROUTER_SPEND_KIND"] == "warn"
    assert set(env) - set(event_env(EVENT)) <= {"PATH", "HOME", "LANG", "TZ", "LC_ALL", "LC_CTYPE"}


async def test_command_failures_retry_and_missing_commands_give_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    count = tmp_path / "count"
    code = "import sys; p = sys.argv[1]; f = open(p, 'a'); f.write('x'); f.close(); sys.exit('boom')"
    channels = parse_channels(
        [
            {"type": "command", "name": "failing", "argv": [sys.executable, "-c", code, str(count)], "append_message": False},
            {"type": "command", "name": "missing", "argv": [str(tmp_path / "no-such-command")]},
        ]
    )
    notifier = Notifier(channels, None, attempts=3, backoff_s=0.01)
    await started(notifier)
    notifier.notify(EVENT)
    await notifier.close()
    assert count.read_text() == "xxx"
    assert "alert not sent channel=failing budget=daily kind=warn attempts=3 reason=exit=1 stderr='boom'" in caplog.text
    assert "alert not sent channel=missing budget=daily kind=warn reason=cannot run" in caplog.text


async def test_queue_full_drops_with_a_log_line_and_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    channels = parse_channels([{"type": "log"}, {"type": "webhook", "url": "http://127.0.0.1:9/hook"}])
    notifier = Notifier(channels, None, queue_size=2)  # run() not started: nothing drains the queue
    for _ in range(3):
        notifier.notify(EVENT)
    assert notifier.dropped == 1
    assert caplog.text.count("alert queue full; dropped budget=daily scope_value= kind=warn threshold=0.5") == 1
    # the log channel wrote every event regardless
    assert caplog.text.count("budget alert channel=log budget=daily") == 3


async def test_kinds_filter_channels(aiohttp_server: ServerFactory, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    channels = parse_channels(
        [{"type": "log", "kinds": ["spent"]}, {"type": "slack", "url": str(server.make_url("/hook/a")), "kinds": ["spent"]}]
    )
    notifier = Notifier(channels, session, queue_size=1)
    await started(notifier)
    notifier.notify(EVENT)
    notifier.notify(SPENT)
    await notifier.close()
    assert receiver.bodies == [{"text": SPENT.message}]
    assert caplog.text.count("budget alert channel=log") == 1
    assert notifier.dropped == 0


async def test_close_gives_a_stalled_receiver_only_drain_s(aiohttp_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    receiver = Receiver(stall_s=30)
    server = await aiohttp_server(receiver.app())
    notifier = Notifier(parse_channels([{"type": "webhook", "url": str(server.make_url("/hook/a"))}]), session, drain_s=0.2)
    task = await started(notifier)
    notifier.notify(EVENT)
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await notifier.close()
    assert loop.time() - began < 2
    assert task.done()
    notifier.notify(EVENT)  # after close: dropped, not queued forever
    assert notifier.dropped == 1


async def test_close_without_run_returns() -> None:
    notifier = Notifier((), None)
    notifier.notify(EVENT)
    await notifier.close()
