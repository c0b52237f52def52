"""/-/whatif from the what-if rollups (proxy/web/whatif.py): the same rows as pricing every logged
request one by one (calculator.whatif_rows), and the totals of rows retention deleted stay in them."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from proxy.cli.main import main
from proxy.pricing.calculator import PriceHistory, logged_request, whatif_rows
from proxy.pricing.catalog import (
    Catalog,
    ModelEntry,
    ModelPricing,
    PriceOverride,
    load_embedded,
    pricing_fingerprint,
)
from proxy.store import rollups
from proxy.store.records import UsageRecord
from proxy.store.sqlite import (
    REQUEST_COLUMNS,
    connect_readonly,
    encode_record,
    encode_time,
    open_db,
    prepare,
    prune_raw,
)
from proxy.web import reads, routes
from proxy.web.query import Query

T0 = datetime(2026, 10, 5, tzinfo=UTC)  # a Monday
D = Decimal


def _entry(model_id: str, pricing: ModelPricing) -> ModelEntry:
    return ModelEntry(id=model_id, name=model_id, canonical_slug=None, context_length=None, created=None, pricing=pricing, is_free=False)


def _record(i: int, at: datetime, rng: random.Random) -> UsageRecord:
    prompt = rng.choice([None, 0, 500, 32_000, 32_001, 128_000, 128_001, 200_000, 200_001, 256_001, 272_000, 272_001, 400_000])
    output = rng.choice([None, 0, 10, 4000])
    return UsageRecord(
        id=f"w{i}", started_at=at, finished_at=at, method="POST", endpoint="chat/completions",
        model_requested="openai/gpt-4o", model=rng.choice(["openai/gpt-4o", "anthropic/claude-sonnet-4", None]),
        provider="OpenAI", generation_id=None, key_fingerprint=rng.choice(["00aa11bb22cc33dd", None]),
        key_alias=rng.choice(["alice", None]), project=rng.choice(["acme", "beta", None]), session=rng.choice(["s1", "s2"]),
        client=rng.choice(["aider", "codex", None]), streamed=False, status=200, outcome="ok", error=None,
        # Clamped per request: cached + written beyond the prompt, 1 h writes beyond writes, reasoning beyond output.
        input_tokens=prompt, output_tokens=output, cached_tokens=rng.choice([None, 0, 400, 120_000]),
        cache_write_tokens=rng.choice([None, 0, 64, 90_000]), cache_write_1h_tokens=rng.choice([None, 0, 32, 100_000]),
        reasoning_tokens=rng.choice([None, 0, 5, 5000]), web_search_requests=rng.choice([None, 0, 2]),
        cost_usd=rng.choice([None, D("0.0123"), D("0.000000000000000000000001"), D("1.5"), D("0.1234567890123")]),
        cost_reported_usd=None, cost_catalog_usd=rng.choice([None, D("0.01"), D("0.00000000000001")]),
        cost_source="catalog", is_free=False, is_byok=False, ttfb_ms=None, duration_ms=900.0,
    )


def _insert(path: Path, records: list[UsageRecord]) -> None:
    db = sqlite3.connect(path)
    with db:
        db.executemany(f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({', '.join('?' for _ in REQUEST_COLUMNS)})",
                       [encode_record(r) for r in records])
    db.close()


def _matches(row: dict[str, Any], query: Query) -> bool:
    at = row["started_at"]
    if query.since is not None and at < encode_time(query.since):
        return False
    if query.until is not None and at >= encode_time(query.until):
        return False
    for name, value in query.filters:
        if name == "key":
            if value not in (row["key_alias"], row["key_fingerprint"]):
                return False
        elif row[name] != value:
            return False
    return True


async def test_whatif_from_the_rollups_equals_pricing_every_request_and_keeps_pruned_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Targets with the catalog's tiers (one and two thresholds), time-of-day prices changing on
    the hour and mid-hour, a weekday price and a price that changed mid-hour; requests across every tier threshold, clamped counts,
    no counts at all; ranges ending mid-hour; filters. Then retention deletes the first days' raw
    rows: whatif over them is unchanged, as it is for the reports; the CLI's whatif says the same."""
    weekday = ModelPricing(prompt=D("0.000002"), completion=D("0.000008"), request=D("0.0004"), discount=D("0.2"), overrides=(
        PriceOverride(prices=(("prompt", D("0.000004")),), min_prompt_tokens=128_000),
        PriceOverride(prices=(("completion", D("0.000004")),), utc_days=(5, 6)),
    ))
    plain_price = ModelPricing(prompt=D("0.000003"), completion=D("0.000015"), input_cache_read=D("3E-7"), web_search=D("0.01"))
    older = ModelPricing(prompt=D("0.000005"), completion=D("0.00002"), overrides=(
        PriceOverride(prices=(("prompt", D("0.00001")),), min_prompt_tokens=200_000),
    ))
    # Dearer output from 01:30 to 07:45 UTC: mid-hour boundaries, so those hours split by the minute.
    night = ModelPricing(prompt=D("0.000001"), completion=D("0.000002"), input_cache_write=D("0.00000125"), overrides=(
        PriceOverride(prices=(("completion", D("0.000005")),), utc_start=130, utc_end=745),
        PriceOverride(prices=(("prompt", D("0.000002")),), min_prompt_tokens=200_000),
    ))
    catalog = Catalog([*load_embedded().models, _entry("t/weekday", weekday), _entry("t/history", plain_price), _entry("t/night", night)])
    path = tmp_path / "u.db"
    prepare(path)
    rng = random.Random(16)
    # Hours with many requests each, across twelve days (weekends included, the time-of-day
    # boundaries 01:00, 04:00, 06:00, 10:00 and the hours of the price changes).
    changes = [T0 + timedelta(days=7, hours=10, minutes=17, seconds=3), T0 + timedelta(days=9, hours=4, minutes=41), T0 + timedelta(days=10, hours=6)]
    slots = [c.replace(minute=0, second=0) for c in changes]
    slots += [T0 + timedelta(days=day, hours=hour) for day in range(12) for hour in (0, 1, 5, 7, 9, 10, 23) if rng.random() < 0.6]
    records = [_record(i, rng.choice(slots) + timedelta(minutes=rng.randrange(60), seconds=rng.randrange(60)), rng) for i in range(1500)]
    _insert(path, records)
    db = sqlite3.connect(path)
    with db:
        db.executemany("INSERT INTO model_prices (model_id, pricing, first_seen_at) VALUES (?, ?, ?)", [
            ("t/history", pricing_fingerprint(older), (T0 - timedelta(days=30)).isoformat()),
            *(("t/history", pricing_fingerprint(p), c.isoformat()) for p, c in zip((plain_price, older, plain_price), changes)),
        ])
    db.close()
    with contextlib.closing(connect_readonly(path)) as reader:
        every = [dict(r) for r in reader.execute("SELECT * FROM requests ORDER BY started_at")]
        history = PriceHistory(reads._history(reader))

    everything = ("anthropic/claude-sonnet-4", "qwen/qwen3-max", "openai/gpt-5.5", "deepseek/deepseek-v4-flash-vision-exp", "t/weekday", "t/history")
    # Grouped by hour (weekday and time-of-day prices), by day (weekday), by hour of day (time of day), by neither.
    target_sets = (everything, ("t/weekday", "t/history"), ("deepseek/deepseek-v4-flash-vision-exp", "qwen/qwen3-max"), ("openai/gpt-5.5", "t/history"),
                   ("t/night", "t/history"), (*everything, "t/night"))
    odd = timedelta(minutes=13, seconds=7)
    queries = [
        Query(),
        Query(since=T0 + timedelta(days=4) + odd, until=T0 + timedelta(days=10, hours=9) + odd),
        Query(since=T0 + timedelta(days=7, hours=10, minutes=30)),  # inside the hour of a price change
        Query(since=T0 + timedelta(days=5, hours=5, minutes=1), until=T0 + timedelta(days=5, hours=5, minutes=40)),  # within one hour
        *(Query(since=T0 + timedelta(days=3) + odd, filters=(f,)) for f in (("project", "acme"), ("key", "alice"), ("key", "00aa11bb22cc33dd"), ("model", "anthropic/claude-sonnet-4"), ("client", "codex"))),
        Query(filters=(("project", "beta"), ("client", "aider"))),
    ]

    def check(query: Query, rows: list[dict[str, Any]], expected: Query | None = None, split_all: bool = True) -> None:
        logged = [logged_request(r) for r in rows if _matches(r, expected or query)]
        for targets in target_sets if split_all else [t for t in target_sets if "t/night" not in t]:
            got = routes.call(path, reads.whatif, (query, catalog, targets))
            assert got == reads._json_rows(whatif_rows(logged, catalog, targets, None, history)), (query, targets)
            assert got[0]["requests"] > 0 and all(row["cost"] != "0" for row in got[2:]), (query, targets)

    for query in queries:
        check(query, every)

    cutoff = T0 + timedelta(days=3, minutes=40)
    writer = await open_db(path)
    try:
        deleted = await prune_raw(writer, cutoff)
    finally:
        await writer.close()
    assert deleted == sum(r["started_at"] < encode_time(T0 + timedelta(days=3)) for r in every) > 100
    for query in queries:
        # Pruned hours cannot split by the minute any more: t/night prices them whole (the best left).
        check(query, every, split_all=query.since is not None and query.since >= T0 + timedelta(days=3))
    # A range starting inside a pruned hour has that whole hour, as the reports do.
    check(Query(since=T0 + timedelta(days=1, hours=9, minutes=20)), every, Query(since=T0 + timedelta(days=1, hours=9)), split_all=False)

    # `openrouter-spend whatif` reads the same way (no --route): the same rows as the page.
    embedded = ("anthropic/claude-sonnet-4", "deepseek/deepseek-v4-flash-vision-exp")
    since = T0 + timedelta(days=4, minutes=5)
    for flags, query in (
        ((), Query()),
        (("--project", "acme", "--since", since.isoformat()), Query(since=since, filters=(("project", "acme"),))),
        (("--session", "s1"), Query(filters=(("session", "s1"),))),
    ):
        argv = ["whatif", "--db", str(path), *(a for m in embedded for a in ("--model", m)), "--format", "json", *flags]
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out) == routes.call(path, reads.whatif, (query, load_embedded(), embedded)), flags


def test_the_bands_split_at_every_tier_threshold_of_the_embedded_catalog() -> None:
    """A catalog update that brings a new threshold re-prices from raw rows (slow) until it is a band."""
    found = {o.min_prompt_tokens for m in load_embedded().models for o in m.pricing.overrides if o.min_prompt_tokens is not None}
    assert found and found <= set(rollups.TIERS)
    assert [rollups.band_prompt(b) for b in range(len(rollups.TIERS) + 1)] == [0, *(t + 1 for t in rollups.TIERS)]


def test_logged_money_the_rollups_cannot_hold_exactly_is_summed_from_raw_rows(tmp_path: Path) -> None:
    """Past 24 decimals a logged cost is counted as inexact in the rollup: whatif then sums the raw rows."""
    path = tmp_path / "u.db"
    prepare(path)
    rng = random.Random(5)
    records = [_record(i, T0 + timedelta(hours=i % 30, minutes=i % 60), rng) for i in range(200)]
    records[7] = dataclasses.replace(records[7], cost_usd=D("0.0000000000000000000000001"), cost_catalog_usd=D("3.0000000000000000000000007"))
    _insert(path, records)
    catalog = load_embedded()
    targets = ("anthropic/claude-sonnet-4",)
    with contextlib.closing(connect_readonly(path)) as reader:
        logged = [logged_request(dict(r)) for r in reader.execute("SELECT * FROM requests")]
        history = PriceHistory(reads._history(reader))
    got = routes.call(path, reads.whatif, (Query(), catalog, targets))
    assert got == reads._json_rows(whatif_rows(logged, catalog, targets, None, history))
    assert got[0]["cost"].endswith("1") and len(got[0]["cost"].split(".")[1]) == 25
