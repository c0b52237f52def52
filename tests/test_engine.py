"""The storage seam: every statement and read the app sends runs the same on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest

from proxy.budgets.ledger import Budgets
from proxy.budgets.spec import parse_budgets
from proxy.config import parse_config
from proxy.errors import ConfigError
from proxy.pricing.generation import Backfill
from proxy.pricing.refresh import _RECORD_PRICE
from proxy.server.guard import _RECORD_ALERT, ALERTS_QUERY, fired_keys, load_spend
from proxy.store import postgres
from proxy.store.engine import Store, open_store
from proxy.store.recorder import Recorder, Statement
from proxy.store.sqlite import encode_time
from tests.pg_cluster import Cluster
from tests.test_storage import make_record

NOW = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)


async def test_backfill_estimate_runs_on_both_engines(store: Store) -> None:
    # The real Backfill with no lookups left: it writes its catalog estimate through the recorder.
    # (The /generation fill itself runs end to end on Postgres in test_postgres_e2e.)
    recorder = Recorder(store)
    cut = make_record(2, cost_usd=None, cost_reported_usd=None, outcome="aborted")
    priced = make_record(3, outcome="aborted")
    recorder.record(cut)
    recorder.record(priced)
    async with aiohttp.ClientSession() as session:
        backfill = Backfill(session, "http://127.0.0.1:9", recorder, lambda r, c: None, lambda a, b: None, delays=())
        backfill.enqueue(cut, None, None, Decimal("0.5"))
        backfill.enqueue(priced, None, None, Decimal("0.7"))  # has a cost: the estimate does not replace it
        for _ in range(20):
            await asyncio.sleep(0)
        await backfill.close()
    await recorder.drain()
    rows = await store.fetch("SELECT id, cost_usd, cost_reported_usd, cost_source FROM requests ORDER BY id")
    assert rows == [("req-000002", "0.5", None, "estimated"), ("req-000003", "0.0055", "0.0055", "reported")]


async def test_price_changes_are_kept_once_each(store: Store) -> None:
    recorder = Recorder(store)
    when = encode_time(NOW)
    for _ in range(2):
        recorder.record(Statement(_RECORD_PRICE, ("openai/gpt-4o", '{"prompt":"0.0000025"}', when)))
    recorder.record(Statement(_RECORD_PRICE, ("openai/gpt-4o", '{"prompt":"0.000003"}', encode_time(NOW + timedelta(hours=1)))))
    recorder.record(Statement(_RECORD_PRICE, ("openai/gpt-4o", '{"prompt":"0.000003"}', encode_time(NOW + timedelta(hours=2)))))
    recorder.record(Statement(_RECORD_PRICE, ("openai/gpt-4o", '{"prompt":"0.0000025"}', encode_time(NOW + timedelta(hours=3)))))
    await recorder.drain()
    assert await store.fetch("SELECT model_id, pricing, first_seen_at FROM model_prices ORDER BY first_seen_at") == [
        ("openai/gpt-4o", '{"prompt":"0.0000025"}', "2026-11-20T18:00:00.000000Z"),
        ("openai/gpt-4o", '{"prompt":"0.000003"}', "2026-11-20T19:00:00.000000Z"),
        ("openai/gpt-4o", '{"prompt":"0.0000025"}', "2026-11-20T21:00:00.000000Z"),  # back to A: a new row
    ]


async def test_budget_warm_up_reads_spend_and_alerts_sent_on_both_engines(store: Store) -> None:
    specs = parse_budgets([{"name": "daily", "limit_usd": 1, "period": "day", "warn_at": [0.5]}])
    tz = ZoneInfo("Europe/Berlin")
    await store.insert_requests(
        [make_record(n, started_at=NOW - timedelta(hours=n), cost_usd=Decimal("0.1000001")) for n in range(3)]
        + [make_record(9, started_at=NOW - timedelta(days=3), cost_usd=Decimal("5"))]  # an earlier day
        + [make_record(10, started_at=NOW, cost_usd=None)]
    )
    window_start = datetime(2026, 11, 20, tzinfo=tz)  # as the ledger keys it: local midnight
    recorder = Recorder(store)
    for _ in range(2):  # a second replica crossing the same threshold records nothing more
        recorder.record(Statement(_RECORD_ALERT, ("daily", "", window_start.isoformat(), "warn:0.5", encode_time(NOW), "m")))
    await recorder.drain()
    assert await store.fetch("SELECT count(*) FROM alerts") == [(1,)]

    budgets = Budgets(specs, tz)
    assert await load_spend(store, budgets, NOW) == 3
    [status] = budgets.snapshot(NOW)
    assert status.spent_usd == Decimal("0.3000003")
    [(budget, scope, start, kind, threshold)] = fired_keys(await store.fetch(ALERTS_QUERY, ("2026-11-19T00:00:00+00:00",)))
    assert (budget, scope, kind, threshold) == ("daily", "", "warn", "0.5")
    assert datetime.fromisoformat(start) == window_start


# -- PostgreSQL's own


@pytest.mark.parametrize(
    ("sqlite", "expected"),
    [
        ("SELECT a FROM t WHERE b = ? AND c >= ?", "SELECT a FROM t WHERE b = $1 AND c >= $2"),
        ("SELECT value FROM meta WHERE key = 'what?' AND x = ?", "SELECT value FROM meta WHERE key = 'what?' AND x = $1"),
        ("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
        ("UPDATE requests SET cost_usd = ? WHERE id = ?", "UPDATE requests SET cost_usd = $1 WHERE id = $2"),
        ("SELECT ?1, ?2 WHERE x != ?1", "SELECT $1, $2 WHERE x != $1"),
    ],
)
def test_translate_sqlite_dialect(sqlite: str, expected: str) -> None:
    assert postgres.translate(sqlite) == expected


def test_translate_refuses_what_it_cannot_mean_the_same() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        postgres.translate("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)")


async def test_postgres_columns_are_exact_money_and_zoned_times(pg_url: str) -> None:
    store = await open_store(pg_url)
    await store.close()
    connection = await asyncpg.connect(pg_url)
    try:
        types = dict(await connection.fetch(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns WHERE table_schema = 'public'"
        ))
        await connection.execute(
            "INSERT INTO requests (id, started_at, finished_at, method, endpoint, streamed, status, outcome, cost_source, "
            "is_free, duration_ms, cost_usd) VALUES ('x', now(), now(), 'POST', 'e', false, 200, 'ok', 'none', false, 1, "
            "0.1), ('y', now(), now(), 'POST', 'e', false, 200, 'ok', 'none', false, 1, 0.2)"
        )
        assert await connection.fetchval("SELECT sum(cost_usd) FROM requests") == Decimal("0.3")
    finally:
        await connection.close()
    for column in ("requests.cost_usd", "requests.cost_reported_usd", "requests.cost_catalog_usd",
                   "imported_activity.usage_usd"):
        assert types[column] == "numeric", column
    for column in ("requests.started_at", "requests.finished_at", "alerts.sent_at", "alerts.window_start",
                   "model_prices.first_seen_at"):
        assert types[column] == "timestamp with time zone", column
    assert types["requests.is_free"] == "boolean"


async def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(open_store(pg_url) for _ in range(4)))
    try:
        versions = await stores[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [v for (v,) in versions] == list(range(1, len(postgres.MIGRATIONS) + 1))
        salts = {await s.salt() for s in stores}
        assert len(salts) == 1  # every replica fingerprints keys the same way
    finally:
        for s in stores:
            await s.close()


def test_config_selects_postgres_by_url_and_refuses_a_password_in_it() -> None:
    config = parse_config({"db": "postgresql://spend@db.internal:5432/spend", "db_password_env": "SPEND_DB_PASSWORD"})
    assert config.db_url == "postgresql://spend@db.internal:5432/spend"
    assert config.db_password_env == "SPEND_DB_PASSWORD"
    assert parse_config({"db": "usage.db"}).db_url is None
    with pytest.raises(ConfigError, match="^db: no password in the URL") as caught:
        parse_config({"db": "postgresql://spend:hunter2@db.internal/spend"})
    assert "hunter2" not in str(caught.value)


async def test_password_comes_from_the_named_variable_only(
    pg_cluster: Cluster, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    role = f"spend_{dbname}"  # roles are cluster-wide; the cluster is the session's
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-from-env'")
        await admin.execute(f"GRANT ALL ON DATABASE {dbname} TO {role}")
        await admin.execute(f"GRANT ALL ON SCHEMA public TO {role}")
    finally:
        await admin.close()
    pg_cluster.require_password(role)
    url = pg_url.replace("postgresql://postgres@", f"postgresql://{role}@")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    with pytest.raises(postgres.WRITE_ERRORS):
        await open_store(url, "SPEND_DB_PASSWORD")  # the variable is not set: no password, refused
    monkeypatch.setenv("SPEND_DB_PASSWORD", "pw-from-env")
    store = await open_store(url, "SPEND_DB_PASSWORD")
    try:
        assert len(await store.salt()) == 16
    finally:
        await store.close()
    monkeypatch.delenv("SPEND_DB_PASSWORD")
    monkeypatch.setenv("PGPASSWORD", "pw-from-env")  # libpq's own variable works too
    store = await open_store(url)
    await store.close()


def test_serve_on_an_unreachable_postgres_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from proxy.cli.main import main

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://spend@127.0.0.1:{port}/spend"
    assert main(["serve", "--db", url, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"openrouter-spend: db: cannot open {url}: ") and err.count("\n") == 1
