"""OpenRouter's own books: `GET /key` (one key's spend per UTC window) and `GET /activity` (the
account's completed days x model, management key only), and `serve`'s periodic key comparison.

Failures come back as one BooksError whose message is a single line for the CLI: which variable's
key OpenRouter refused, or that it could not be reached. The key itself never appears in one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from proxy.pricing.reconcile import KeyUsage, Line, compare_key, parse_activity, parse_key, window_starts
from proxy.store.activity import ActivityRow, Recorded, recorded_by_day, records_byok, stored_salt, windows_of
from proxy.store.reader import errors, open_reader

log = logging.getLogger(__name__)


class BooksError(Exception):
    """OpenRouter refused the key, could not be reached, or answered something unreadable."""


async def _get(session: aiohttp.ClientSession, url: str, key: str, key_env: str) -> Any:
    headers = {"Authorization": f"Bearer {key}", "Accept-Encoding": "identity"}
    try:
        async with session.get(url, headers=headers) as response:
            if response.status in (401, 403):
                reason = "does not know this key (revoked or mistyped?)" if response.status == 401 else "refused this key"
                raise BooksError(f"{key_env}: OpenRouter {reason}: HTTP {response.status} from {url}")
            if response.status >= 400:
                raise BooksError(f"upstream: {url} answered HTTP {response.status}")
            return await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        detail = " ".join(str(exc).split())  # one line, whatever the library's message looks like
        raise BooksError(f"upstream: cannot reach {url}: {type(exc).__name__}: {detail}".rstrip(": ")) from None
    except ValueError:
        raise BooksError(f"upstream: {url} did not answer JSON") from None


async def fetch_key(session: aiohttp.ClientSession, upstream: str, key: str, key_env: str) -> KeyUsage:
    url = upstream.rstrip("/") + "/key"
    try:
        return parse_key(await _get(session, url, key, key_env))
    except ValueError as exc:
        raise BooksError(f"upstream: {url} answered an unexpected shape ({exc})") from None


async def fetch_activity(session: aiohttp.ClientSession, upstream: str, key: str, key_env: str) -> list[ActivityRow]:
    url = upstream.rstrip("/") + "/activity"
    try:
        return parse_activity(await _get(session, url, key, key_env))
    except ValueError as exc:
        raise BooksError(f"upstream: {url} answered an unexpected shape ({exc})") from None


@dataclass(slots=True)
class SettledDays:
    """serve's periodic check keeps the sums of days before yesterday between runs, so each run
    reads two days of rows instead of a month: older rows no longer change (back-fills land within
    minutes)."""

    filled: bool = False
    days: dict[str, Recorded] = field(default_factory=dict)


def key_lines(db_path: Path | str, key: KeyUsage, fingerprint: Callable[[bytes], str] | None, now: datetime,
              tolerance: Decimal, settled: SettledDays | None = None, password_env: str | None = None) -> list[Line]:
    """Compare `/key` with the rows of that key (by its salted fingerprint; None: every row)."""
    starts = window_starts(now)
    first = min(starts.values())
    cutoff = starts["day"] - timedelta(days=1)
    db = open_reader(db_path, password_env)
    try:
        salt = stored_salt(db)
        if fingerprint is not None and salt is None:
            # `serve` never ran on this database, so no row can carry this key's fingerprint.
            days: dict[str, Recorded] = {}
            byok_known = records_byok(db)
        else:
            wanted = fingerprint(salt) if fingerprint is not None and salt is not None else None
            reuse = settled is not None and settled.filled and cutoff > first
            days, byok_known = recorded_by_day(db, cutoff if reuse else first, wanted)
            if settled is not None:
                if reuse:
                    days.update({d: r for d, r in settled.days.items() if d < cutoff.date().isoformat()})
                settled.days = {d: r for d, r in days.items() if first.date().isoformat() <= d < cutoff.date().isoformat()}
                settled.filled = True
    finally:
        db.close()
    return compare_key(key, windows_of(days, starts, byok_known), tolerance)


class Reconciler:
    """`serve`'s periodic key comparison: exports each window's gap; never raises into the loop."""

    def __init__(self, session: aiohttp.ClientSession, upstream: str, key: str, key_env: str, db_path: Path | str,
                 fingerprint: Callable[[bytes], str] | None, on_lines: Callable[[list[Line], float], None],
                 on_failure: Callable[[], None], tolerance: Decimal = Decimal("0.01"), password_env: str | None = None) -> None:
        self._session, self._upstream, self._key, self._key_env = session, upstream, key, key_env
        self._password_env = password_env
        self._db_path, self._fingerprint, self._tolerance = db_path, fingerprint, tolerance
        self._on_lines, self._on_failure = on_lines, on_failure
        self._settled = SettledDays()
        # A check called while the loop's own runs (tests, a future on-demand endpoint) waits its
        # turn: both would otherwise rewrite the settled days at once.
        self._lock = asyncio.Lock()

    async def check(self) -> list[Line] | None:
        async with self._lock:
            return await self._check()

    async def _check(self) -> list[Line] | None:
        try:
            key = await fetch_key(self._session, self._upstream, self._key, self._key_env)
            lines = await asyncio.to_thread(
                key_lines, self._db_path, key, self._fingerprint, datetime.now(UTC), self._tolerance, self._settled,
                self._password_env,
            )
        except errors() + (BooksError,) as exc:
            self._on_failure()
            log.warning("event=reconcile_failed error=%s", exc)
            return None
        self._on_lines(lines, time.time())
        for line in lines:
            if not line.within:
                log.warning("event=reconcile_gap window=%s openrouter_usd=%s ours_usd=%s gap_usd=%s meaning=%r",
                            line.what.replace(" ", "_"), line.openrouter, line.ours, line.gap, line.meaning)
        return lines

    async def run(self, interval_s: float) -> None:
        while True:
            await self.check()
            await asyncio.sleep(interval_s)
