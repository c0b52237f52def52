"""Alert delivery: budget AlertEvents to the log, JSON, Slack and Discord webhooks, and local commands.

notify() only queues, so a request never waits on delivery; one background task sends with bounded
retries and exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from proxy.budgets.ledger import KINDS, AlertEvent
from proxy.errors import ConfigError, shown

log = logging.getLogger(__name__)

CHANNEL_TYPES = ("log", "webhook", "slack", "discord", "command")
_COMMON = ("type", "name", "kinds")
_KEYS = {
    "log": _COMMON,
    "webhook": (*_COMMON, "url", "url_env", "timeout_s"),
    "slack": (*_COMMON, "url", "url_env", "timeout_s"),
    "discord": (*_COMMON, "url", "url_env", "timeout_s"),
    "command": (*_COMMON, "argv", "append_message", "timeout_s"),
}
_HTTP = ("webhook", "slack", "discord")
_DISCORD_MAX = 2000  # Discord rejects longer `content`
_MAX_BACKOFF_S = 60.0
_BROADCAST = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
# What a command child inherits from the proxy's environment: enough to find programs and speak
# the locale, never the managed key, a metrics token or webhook URLs.
_CHILD_ENV = ("PATH", "HOME", "LANG", "TZ")


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    type: str
    name: str
    path: str  # where it was configured, for error messages: alerts[1]
    url: str | None = None
    url_env: str | None = None
    argv: tuple[str, ...] = ()
    append_message: bool = True
    kinds: tuple[str, ...] = KINDS
    timeout_s: float = 10.0


# ---------------------------------------------------------------- config


def parse_channels(raw: Any, path: str = "alerts") -> tuple[ChannelSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: expected a list of channels, got {shown(raw)}")
    channels: list[ChannelSpec] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        channel = _parse_one(item, f"{path}[{i}]")
        if channel.name in names and "name" not in item:
            channel = replace(channel, name=f"{channel.name}-{i}")
        if channel.name in names:
            raise ConfigError(f"{path}[{i}].name: duplicate channel name {channel.name!r}")
        names.add(channel.name)
        channels.append(channel)
    return tuple(channels)


def _parse_one(raw: Any, path: str) -> ChannelSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {shown(raw)}")
    kind = raw.get("type")
    if kind not in CHANNEL_TYPES:
        raise ConfigError(f"{path}.type: expected one of {', '.join(CHANNEL_TYPES)}, got {shown(kind)}")
    for k in raw:
        if k not in _KEYS[kind]:
            raise ConfigError(f"{path}.{k}: unknown key for a {kind} channel; expected one of {', '.join(_KEYS[kind])}")
    name = raw.get("name", kind)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}.name: expected a non-empty string, got {shown(name)}")
    kinds = raw.get("kinds", list(KINDS))
    if not isinstance(kinds, list) or not kinds or any(k not in KINDS for k in kinds):
        raise ConfigError(f"{path}.kinds: expected a list drawn from {', '.join(KINDS)}, got {shown(kinds)}")
    timeout = raw.get("timeout_s", 10)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{path}.timeout_s: expected a positive number of seconds, got {shown(timeout)}")
    spec = ChannelSpec(type=kind, name=name, path=path, kinds=tuple(dict.fromkeys(kinds)), timeout_s=float(timeout))
    if kind in _HTTP:
        return _parse_http(raw, path, spec)
    if kind == "command":
        argv = raw.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
            raise ConfigError(
                f"{path}.argv: expected a non-empty list of strings such as [notify-send, openrouter-spend], got {shown(argv)}"
            )
        append = raw.get("append_message", True)
        if not isinstance(append, bool):
            raise ConfigError(f"{path}.append_message: expected true or false, got {shown(append)}")
        return replace(spec, argv=tuple(argv), append_message=append)
    return spec


def _parse_http(raw: Mapping[str, Any], path: str, spec: ChannelSpec) -> ChannelSpec:
    url, env = raw.get("url"), raw.get("url_env")
    if (url is None) == (env is None):
        raise ConfigError(f"{path}: give exactly one of url or url_env")
    if url is not None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            # Never echo the value: a webhook URL is a secret.
            raise ConfigError(f"{path}.url: expected an http:// or https:// URL")
        return replace(spec, url=url)
    if not isinstance(env, str) or not env:
        raise ConfigError(f"{path}.url_env: expected the name of an environment variable, got {shown(env)}")
    return replace(spec, url_env=env)



def resolve_url(channel: ChannelSpec, environ: Mapping[str, str]) -> str:
    if channel.url is not None:
        return channel.url
    value = environ.get(channel.url_env or "", "")
    if not value.startswith(("http://", "https://")):
        state = "is not set" if not value else "does not hold an http:// or https:// URL"
        raise ConfigError(f"{channel.path}.url_env: environment variable {channel.url_env} {state}")
    return value


# ---------------------------------------------------------------- bodies


def event_payload(event: AlertEvent) -> dict[str, Any]:
    """The generic webhook body; money as strings so no receiver rounds it."""
    return {
        "source": "openrouter-spend",
        "budget": event.budget,
        "scope": event.scope,
        "scope_value": event.scope_value,
        "kind": event.kind,
        "threshold": str(event.threshold),
        "spent_usd": str(event.spent_usd),
        "limit_usd": str(event.limit_usd),
        "projected_usd": None if event.projected_usd is None else str(event.projected_usd),
        "window_start": event.window_start.isoformat(),
        "window_end": event.window_end.isoformat(),
        "message": event.message,
    }


def body_for(channel: ChannelSpec, event: AlertEvent) -> dict[str, Any]:
    # Session and project names in a message come from clients: a session called @everyone must
    # not ping a channel. Discord: mention nobody. Slack has no such switch: escape its markup.
    if channel.type == "slack":
        return {"text": slack_text(event.message)}
    if channel.type == "discord":
        return {"content": event.message[:_DISCORD_MAX], "allowed_mentions": {"parse": []}}
    return event_payload(event)


def slack_text(text: str) -> str:
    """Escape Slack's control characters (so `<!channel>`, `<@U1>` or a link cannot be formed), and
    break `@channel`, `@here`, `@everyone` with a zero-width space (Slack may link bare names)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _BROADCAST.sub(lambda m: "@\u200b" + m.group(1), text)


def event_env(event: AlertEvent) -> dict[str, str]:
    """What a command channel gets in its environment, besides the message as its last argument."""
    payload = event_payload(event)
    return {f"OPENROUTER_SPEND_{k.upper()}": "" if v is None else str(v) for k, v in payload.items() if k != "source"}


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k in _CHILD_ENV or k.startswith("LC_")}


# ---------------------------------------------------------------- delivery


class _Retry(Exception):
    pass


class _GiveUp(Exception):
    pass


class Notifier:
    """Queues events from the request path and delivers them from one background task, run()."""

    def __init__(
        self,
        channels: tuple[ChannelSpec, ...],
        session: aiohttp.ClientSession | None,
        *,
        queue_size: int = 100,
        attempts: int = 5,
        backoff_s: float = 1.0,
        drain_s: float = 5.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._urls = {c.name: resolve_url(c, env) for c in channels if c.type in _HTTP}
        self._logs = tuple(c for c in channels if c.type == "log")
        self._remote = tuple(c for c in channels if c.type != "log")
        self._session = session
        self._queue: asyncio.Queue[AlertEvent] = asyncio.Queue(queue_size)
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._drain_s = drain_s
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0

    def notify(self, event: AlertEvent) -> None:
        """Never blocks: log channels write now, the rest are queued (dropped with a log line if full)."""
        for channel in self._logs:
            if event.kind in channel.kinds:
                log.warning(
                    "budget alert channel=%s budget=%s scope_value=%s kind=%s threshold=%s spent_usd=%s limit_usd=%s message=%r",
                    channel.name, event.budget, event.scope_value, event.kind, event.threshold,
                    event.spent_usd, event.limit_usd, event.message,
                )  # fmt: skip
        if not any(event.kind in c.kinds for c in self._remote):
            return
        try:
            if self._closing:
                raise asyncio.QueueFull
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning(
                "alert queue full; dropped budget=%s scope_value=%s kind=%s threshold=%s",
                event.budget, event.scope_value, event.kind, event.threshold,
            )  # fmt: skip

    async def run(self) -> None:
        """The delivery task; close() ends it."""
        self._task = asyncio.current_task()
        own: aiohttp.ClientSession | None = None
        if self._session is None and self._urls:
            own = self._session = aiohttp.ClientSession()
        try:
            while True:
                event = await self._queue.get()
                try:
                    await asyncio.gather(*(self._deliver(c, event) for c in self._remote if event.kind in c.kinds))
                finally:
                    self._queue.task_done()
        finally:
            if own is not None:
                await own.close()

    async def close(self) -> None:
        """Stop taking events, give queued ones up to drain_s to go out, then end run()."""
        self._closing = True
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(self._queue.join(), self._drain_s)
        except TimeoutError:
            log.warning("alert delivery cut short at shutdown; undelivered=%d", self._queue.qsize())
        task.cancel()
        await asyncio.wait([task])

    async def _deliver(self, channel: ChannelSpec, event: AlertEvent) -> None:
        reason = ""
        for attempt in range(1, self._attempts + 1):
            try:
                if channel.type == "command":
                    await self._run_command(channel, event)
                else:
                    await self._post(channel, event)
            except _GiveUp as exc:
                log.error("alert not sent channel=%s budget=%s kind=%s reason=%s", channel.name, event.budget, event.kind, exc)
                return
            except _Retry as exc:
                reason = str(exc)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # The class only: an aiohttp error's text can carry the URL, and webhook URLs are secrets.
                reason = type(exc).__name__
            else:
                log.info("alert sent channel=%s budget=%s kind=%s attempt=%d", channel.name, event.budget, event.kind, attempt)
                return
            if attempt < self._attempts:
                delay = min(self._backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S)
                log.warning(
                    "alert delivery failed channel=%s budget=%s attempt=%d reason=%s retry_in_s=%.3g",
                    channel.name, event.budget, attempt, reason, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
        log.error(
            "alert not sent channel=%s budget=%s kind=%s attempts=%d reason=%s",
            channel.name, event.budget, event.kind, self._attempts, reason,
        )  # fmt: skip

    async def _post(self, channel: ChannelSpec, event: AlertEvent) -> None:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=channel.timeout_s)
        async with self._session.post(self._urls[channel.name], json=body_for(channel, event), timeout=timeout) as resp:
            await resp.read()
            if resp.status < 300:
                return
            if resp.status in (408, 429) or resp.status >= 500:
                raise _Retry(f"status={resp.status}")
            raise _GiveUp(f"status={resp.status}")

    async def _run_command(self, channel: ChannelSpec, event: AlertEvent) -> None:
        argv = [*channel.argv, event.message] if channel.append_message else list(channel.argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env={**child_env(os.environ), **event_env(event)},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise _GiveUp(f"cannot run {argv[0]}: {exc.strerror}") from None
        try:
            _, err = await asyncio.wait_for(proc.communicate(), channel.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise _Retry("timeout") from None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise _Retry(f"exit={proc.returncode} stderr={tail[0][:200]!r}")
