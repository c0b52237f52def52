"""Recorder: batched writes, drain at shutdown, retry while another connection holds the lock, counted drops.

Tests taking `store` run once per engine (SQLite and PostgreSQL); the lock tests are SQLite's own.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from proxy.store.engine import Store
from proxy.store.recorder import Recorder, Statement
from proxy.store.sqlite import open_db
from tests.test_storage import make_record


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    connection = await open_db(tmp_path / "usage.db")
    # The default 5 s busy wait would make every locked write in these tests take 5 s.
    await connection.execute("PRAGMA busy_timeout=50")
    try:
        yield connection
    finally:
        await connection.close()


async def stored_ids(store: Store) -> list[str]:
    return [row[0] for row in await store.fetch("SELECT id FROM requests ORDER BY id")]


def ids(path: Path) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        return [row[0] for row in connection.execute("SELECT id FROM requests ORDER BY id")]
    finally:
        connection.close()


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


class Locker:
    """Another process's long write transaction: holds the database's write lock until released."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.connection.execute("BEGIN EXCLUSIVE")
        self.connection.execute("SELECT count(*) FROM requests").fetchone()

    def release(self) -> None:
        self.connection.execute("ROLLBACK")
        self.connection.close()


async def test_rows_queued_together_are_written_in_one_batch(store: Store) -> None:
    batches: list[int] = []
    recorder = Recorder(store, on_rows=batches.append)
    for n in range(500):
        recorder.record(make_record(n))
    task = asyncio.create_task(recorder.run())
    try:
        await wait_for(lambda: recorder.written == 500)
    finally:
        await stop(task)
    assert batches == [500]
    assert len(await stored_ids(store)) == 500


async def test_batches_are_capped(store: Store) -> None:
    batches: list[int] = []
    recorder = Recorder(store, max_batch=100, on_rows=batches.append)
    for n in range(250):
        recorder.record(make_record(n))
    task = asyncio.create_task(recorder.run())
    try:
        await wait_for(lambda: recorder.written == 250)
    finally:
        await stop(task)
    assert batches == [100, 100, 50]


async def test_a_quiet_proxy_writes_each_row_at_once(store: Store) -> None:
    recorder = Recorder(store)
    task = asyncio.create_task(recorder.run())
    try:
        recorder.record(make_record(1))
        for _ in range(100):
            if await stored_ids(store) == ["req-000001"]:
                break
            await asyncio.sleep(0.01)
        assert await stored_ids(store) == ["req-000001"]
    finally:
        await stop(task)


async def test_drain_after_cancel_writes_everything(store: Store) -> None:
    recorder = Recorder(store, max_batch=50)
    task = asyncio.create_task(recorder.run())
    await asyncio.sleep(0)
    for n in range(1000):
        recorder.record(make_record(n))
    await stop(task)
    await recorder.drain()
    assert len(await stored_ids(store)) == 1000
    assert recorder.depth() == 0 and recorder.dropped == 0


async def test_statements_run_after_the_rows_they_update(store: Store) -> None:
    recorder = Recorder(store)
    recorder.record(make_record(1, cost_usd=None))
    recorder.record(Statement("UPDATE requests SET cost_usd = ?, cost_source = ? WHERE id = ?",
                              ("0.25", "generation", "req-000001")))
    await recorder.drain()
    assert await store.fetch("SELECT cost_usd, cost_source FROM requests") == [("0.25", "generation")]


async def test_locked_database_is_retried_and_rows_arrive_after_release(db: aiosqlite.Connection, tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    errors: list[None] = []
    recorder = Recorder(db, on_write_error=lambda: errors.append(None), retry_base_s=0.02, retry_max_s=0.1)
    task = asyncio.create_task(recorder.run())
    locker = Locker(path)
    try:
        for n in range(20):
            recorder.record(make_record(n))
        await wait_for(lambda: len(errors) >= 3)
        assert recorder.written == 0
        for n in range(20, 40):  # requests keep flowing while the lock is held
            recorder.record(make_record(n))
    finally:
        locker.release()
    try:
        await wait_for(lambda: recorder.written == 40)
    finally:
        await stop(task)
    assert len(ids(path)) == 40
    assert recorder.dropped == 0


async def test_shutdown_while_locked_loses_no_row_once_the_lock_goes(db: aiosqlite.Connection, tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    errors: list[None] = []
    recorder = Recorder(db, on_write_error=lambda: errors.append(None), retry_base_s=0.02, retry_max_s=0.05)
    task = asyncio.create_task(recorder.run())
    locker = Locker(path)
    for n in range(30):
        recorder.record(make_record(n))
    await wait_for(lambda: len(errors) >= 2)
    # Shutdown begins while the writer holds a batch it could not write yet.
    await stop(task)
    locker.release()
    await recorder.drain(deadline_s=5)
    assert len(ids(path)) == 30


async def test_drain_gives_up_at_its_deadline_when_the_lock_never_goes(
    db: aiosqlite.Connection, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(db, retry_base_s=0.02, retry_max_s=0.05)
    locker = Locker(tmp_path / "usage.db")
    try:
        for n in range(5):
            recorder.record(make_record(n))
        began = asyncio.get_running_loop().time()
        await recorder.drain(deadline_s=0.5)
        assert asyncio.get_running_loop().time() - began < 3
    finally:
        locker.release()
    assert "records_lost_at_shutdown count=5" in caplog.text


async def test_queue_full_drops_are_counted(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    dropped: list[None] = []
    recorder = Recorder(store, max_queue=3, on_dropped=lambda: dropped.append(None))
    for n in range(5):
        recorder.record(make_record(n))
    assert recorder.dropped == 2 and len(dropped) == 2
    assert recorder.depth() == 3
    assert "record_dropped reason=queue_full request_id=req-000004" in caplog.text
    await recorder.drain()
    assert await stored_ids(store) == ["req-000000", "req-000001", "req-000002"]


async def test_record_never_blocks_or_awaits(store: Store) -> None:
    recorder = Recorder(store, max_queue=10)
    assert recorder.record(make_record(1)) is None  # a plain function, not a coroutine
    await recorder.drain()


async def test_cancel_at_any_point_of_a_write_stops_the_writer_and_loses_nothing(
    store: Store
) -> None:
    # Shutdown cancels the writer wherever it is: inside BEGIN, executemany or COMMIT. It must
    # stop (not swallow the cancel and retry forever) and drain() must write what it held.
    recorder = Recorder(store, max_batch=40, retry_base_s=0.01)
    total = 0
    for round_ in range(40):
        task = asyncio.create_task(recorder.run())
        for n in range(120):
            recorder.record(make_record(total + n))
        total += 120
        for _ in range(round_ % 8):
            await asyncio.sleep(0)
        await asyncio.sleep((round_ % 5) / 2000)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=3)
        assert done, f"writer ignored its cancellation in round {round_}"
        assert task.cancelled()
        await recorder.drain()
    assert len(await stored_ids(store)) == total


async def test_retries_back_off_up_to_their_cap(db: aiosqlite.Connection, tmp_path: Path) -> None:
    """While the database stays locked the writer waits longer each time, not a fixed beat."""
    loop = asyncio.get_running_loop()
    failures: list[float] = []
    recorder = Recorder(db, on_write_error=lambda: failures.append(loop.time()), retry_base_s=0.02, retry_max_s=0.16)
    task = asyncio.create_task(recorder.run())
    locker = Locker(tmp_path / "usage.db")
    try:
        recorder.record(make_record(1))
        await wait_for(lambda: len(failures) >= 6, timeout=10)
    finally:
        locker.release()
        await stop(task)
    # Each attempt costs the 50 ms busy wait plus the back-off: 20, 40, 80, 160, 160 ms. Compare
    # sums with a wide margin rather than single gaps: the point is growth, not exact timing.
    gaps = [b - a for a, b in zip(failures, failures[1:])]
    early, late = gaps[0] + gaps[1], gaps[3] + gaps[4]  # ~0.16 s vs ~0.42 s; without back-off equal
    assert late > early + 0.12, gaps


async def test_the_writers_batch_sums_stay_in_memory(db: aiosqlite.Connection, tmp_path: Path) -> None:
    # Each batch sums its rows into TEMP tables before the rollups (proxy/store/rollups.py): in a
    # temp file they cost ~12% of the writer's CPU per row (bench.recorder_bench, issue 15).
    recorder = Recorder(db, batch_wait_s=0)
    for i in range(8):
        recorder.record(make_record(id=f"t{i}"))
    await recorder.drain()
    async with db.execute("PRAGMA temp_store") as cursor:
        assert await cursor.fetchone() == (2,)  # MEMORY
    async with db.execute("SELECT count(*) FROM temp.sqlite_master WHERE name = 'spend_batch'") as cursor:
        row = await cursor.fetchone()
    assert row is not None and row[0] >= 1  # the batch path ran
    assert ids(tmp_path / "usage.db") == sorted(f"t{i}" for i in range(8))
