"""Recorder: a bounded queue and the single task that writes the store (SQLite or PostgreSQL), in batched transactions.

Handlers call `record()`, which never blocks or awaits. The writer waits `batch_wait_s` (50 ms)
after the first record of a batch, then writes everything queued in one transaction: a SIGKILL
loses at most the rows of that window and of the transaction in flight (well under a second of
traffic; the fault suite checks 0.5 s). A failed write (locked or full disk, Postgres restarting) keeps its
batch and retries with backoff; new rows queue behind it up to the bound, then are counted as dropped.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosqlite

from proxy.store.engine import SqliteStore, Store, as_store
from proxy.store.records import UsageRecord
from proxy.store.sqlite import prune_raw

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Statement:
    """Any other write (a back-filled cost, an alert sent, a price seen), run by the same writer."""

    sql: str
    params: tuple[Any, ...]


Item = UsageRecord | Statement


def _nothing(*_: Any) -> None:
    return None


class Recorder:
    def __init__(
        self,
        db: Store | aiosqlite.Connection,
        *,
        max_queue: int = 100_000,
        max_batch: int = 2_000,
        on_dropped: Callable[[], None] = _nothing,
        on_write_error: Callable[[], None] = _nothing,
        on_rows: Callable[[int], None] = _nothing,
        retry_base_s: float = 0.05,
        retry_max_s: float = 5.0,
        batch_wait_s: float = 0.05,
        raw_days: float | None = None,
        prune_every_s: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = as_store(db)
        self._write_errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError, *self._store.write_errors)
        self._queue: asyncio.Queue[Item] = asyncio.Queue(max_queue)
        self._max_batch = max_batch
        self._on_dropped = on_dropped
        self._on_write_error = on_write_error
        self._on_rows = on_rows
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._batch_wait_s = batch_wait_s
        self._inflight: list[Item] = []
        # Retention: raw rows older than raw_days are deleted by this writer (their totals live on in
        # the hourly rollup), checked at start and then at most every prune_every_s.
        self._raw_days = raw_days
        self._prune_every_s = prune_every_s
        self._clock = clock
        self._pruned_at: float | None = None
        self.pruned = 0
        self.written = 0
        self.dropped = 0
        # From a failed write until the next one succeeds (storage.on_unavailable: block reads it).
        self.unavailable = False

    def depth(self) -> int:
        """Records not yet committed: queued, or in the batch being written."""
        return self._queue.qsize() + len(self._inflight)

    def record(self, item: Item) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            self._on_dropped()
            what = item.id if isinstance(item, UsageRecord) else "statement"
            log.warning("event=record_dropped reason=queue_full request_id=%s", what)

    async def run(self) -> None:
        """The writer task: runs until cancelled, then the cleanup context calls drain()."""
        backlogged = False
        await self._maybe_prune()
        while True:
            # Held here, not in a local, until written: if shutdown cancels us mid-write or
            # mid-retry, drain() still has the batch.
            self._inflight = [await self._queue.get()]
            if self._batch_wait_s and not backlogged:
                # One transaction per short window instead of per row: a commit and its thread
                # hops cost far more than a row, and a row written 50 ms later loses nothing.
                # When the last batch was full the writer is behind: no waiting until it catches up.
                await asyncio.sleep(self._batch_wait_s)
            self._take_ready(self._inflight)
            backlogged = len(self._inflight) >= self._max_batch
            await self._write_with_retry(self._inflight)
            self._inflight = []
            await self._maybe_prune()

    async def _maybe_prune(self) -> None:
        # Retention leans on SQLite's hourly rollups; PostgreSQL keeps every row for now.
        if self._raw_days is None or not isinstance(self._store, SqliteStore):
            return
        now = asyncio.get_running_loop().time()
        if self._pruned_at is not None and now - self._pruned_at < self._prune_every_s:
            return
        self._pruned_at = now
        try:
            deleted = await prune_raw(self._store.db, self._clock() - timedelta(days=self._raw_days))
        except (sqlite3.Error, OSError) as exc:
            # Not fatal: the rows stay until the next try.
            log.warning("event=retention_failed error=%s", exc)
            return
        self.pruned += deleted
        if deleted:
            log.info("event=retention_pruned rows=%d raw_days=%s", deleted, self._raw_days)

    async def drain(self, deadline_s: float = 10.0) -> None:
        """Write everything still queued; used at shutdown after run() was cancelled."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        batch, self._inflight = self._inflight, []
        while True:
            self._take_ready(batch)
            if not batch:
                return
            if not await self._write_with_retry(batch, until=end):
                lost = len(batch) + self._queue.qsize()
                log.error("event=records_lost_at_shutdown count=%d reason=database_unwritable", lost)
                return
            batch = []

    def _take_ready(self, batch: list[Item]) -> None:
        while len(batch) < self._max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _write_with_retry(self, batch: list[Item], until: float | None = None) -> bool:
        delay = self._retry_base_s
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._write(batch)
                self.unavailable = False
                return True
            except self._write_errors as exc:
                self.unavailable = True
                self._on_write_error()
                log.warning(
                    "event=record_write_failed rows=%d queued=%d error=%s retry_in_s=%.2f",
                    len(batch),
                    self._queue.qsize(),
                    exc,
                    delay,
                )
                if until is not None and loop.time() + delay > until:
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)

    async def _write(self, batch: list[Item]) -> None:
        records = [item for item in batch if isinstance(item, UsageRecord)]
        statements = [item for item in batch if isinstance(item, Statement)]
        if records:
            await self._store.insert_requests(records)
        if statements:
            # Statements update rows inserted earlier in this or a previous batch.
            await self._store.run_statements([(s.sql, s.params) for s in statements])
        self.written += len(records)
        self._on_rows(len(records))
