from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import calculator as calculator_cli

from proxy.store import sqlite as storage
from proxy.pricing.calculator import (
    LoggedRequest,
    PriceHistory,
    Route,
    estimate_rows,
    estimate_usage,
    format_ratio,
    logged_request,
    model_rows,
    price_changes,
    reprice,
    summary_line,
    whatif_rows,
)
from proxy.cli.calculator import parse_route
from proxy.pricing.catalog import Catalog, parse_models, pricing_fingerprint, pricing_from_json
from proxy.errors import CliError
from proxy.pricing.price import price
from proxy.store.records import ABORTED, COST_CATALOG, COST_NONE, COST_REPORTED, OK, UsageRecord
from proxy.usage import Usage

FIXTURES = Path(__file__).parent / "fixtures"
F2025, F2026 = FIXTURES / "models-2025.json", FIXTURES / "models-2026.json"
C2025 = parse_models(json.loads(F2025.read_text()))
C2026 = parse_models(json.loads(F2026.read_text()))
NOON = datetime(2026, 8, 24, 12, 0, tzinfo=timezone.utc)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    parser = argparse.ArgumentParser(prog="openrouter-spend")
    calculator_cli.add_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


# ---------------------------------------------------------------- acceptance


def test_acceptance_estimate_on_the_2025_listing(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "estimate", "--catalog", str(F2025), "--input", "1000", "--output", "500",
              "--calls", "1000000", "--per", "month",
              "--model", "meta-llama/llama-3.1-8b-instruct", "--model", "openai/gpt-4o")
    lines = out.splitlines()
    llama = next(line for line in lines if line.startswith("meta-llama/llama-3.1-8b-instruct "))
    gpt = next(line for line in lines if line.startswith("openai/gpt-4o "))
    assert llama.split()[-2:] == ["$0.000035", "$35.00"]
    assert gpt.split()[-2:] == ["$0.0075", "$7,500.00"]
    assert lines[-2] == "meta-llama/llama-3.1-8b-instruct is about 214 times cheaper than openai/gpt-4o"
    assert lines[-1].startswith("prices as of ")


def test_acceptance_figures_are_exact() -> None:
    rows = estimate_rows(C2025, estimate_usage(1000, 500), at=NOON, calls=1_000_000, per="month",
                         models=["meta-llama/llama-3.1-8b-instruct", "openai/gpt-4o"], vs="openai/gpt-4o")
    assert [(r["model"], r["per_call"], r["per_month"], r["vs openai/gpt-4o"]) for r in rows] == [
        ("meta-llama/llama-3.1-8b-instruct", D("0.000035"), D("35"), "214 times cheaper"),
        ("openai/gpt-4o", D("0.0075"), D("7500"), "same"),
    ]
    assert D("0.0075") / D("0.000035") == D("214.2857142857142857142857143")


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("cost", "reference", "text"),
    [
        ("0.000035", "0.0075", "214 times cheaper"),
        ("0.0075", "0.000035", "214 times dearer"),
        ("0.006", "0.015", "2.5 times cheaper"),
        ("0.015", "0.006", "2.5 times dearer"),
        ("0.0105", "0.0105", "same"),
        ("3.896507", "3.896792", "0.01% cheaper"),
        ("1.05", "1", "5.00% dearer"),
        ("1.1", "1", "1.1 times dearer"),
        ("0", "0.0105", "free"),
        ("1", "0", "n/a"),
    ],
)
def test_format_ratio(cost: str, reference: str, text: str) -> None:
    assert format_ratio(D(cost), D(reference)) == text


# ---------------------------------------------------------------- estimate


def test_estimate_with_cache_and_reasoning() -> None:
    usage = estimate_usage(1000, 300, cached_input=800, reasoning=200)
    assert usage == Usage(input_tokens=1000, output_tokens=500, cached_tokens=800, reasoning_tokens=200)
    [row] = estimate_rows(C2025, usage, at=NOON, models=["openai/gpt-4o"], calls=30, per="day")
    # 200 x 2.5/1M + 800 x 1.25/1M + 500 x 10/1M
    assert (row["per_call"], row["per_day"]) == (D("0.0065"), D("0.195"))


def test_estimate_cheapest_paid_models() -> None:
    rows = estimate_rows(C2025, estimate_usage(1000, 500), at=NOON, cheapest=4)
    # free entries, the 0/0 one and the variable openrouter/auto are left out; ties go by id
    assert [(r["model"], r["per_call"]) for r in rows] == [
        ("meta-llama/llama-3.1-8b-instruct", D("0.000035")),
        ("mistral/ministral-8b", D("0.00015")),
        ("mistralai/ministral-8b", D("0.00015")),
        ("perplexity/sonar-deep-research", D("0.006")),
    ]


def test_estimate_cheapest_skips_aliases_and_adds_to_named_models() -> None:
    rows = estimate_rows(C2026, estimate_usage(1000, 500), at=NOON, models=["openai/gpt-4o"], cheapest=2)
    assert [r["model"] for r in rows] == ["openai/gpt-4o", "meta-llama/llama-3.1-8b-instruct",
                                          "deepseek/deepseek-v4-flash-vision-exp"]
    ids = [r["model"] for r in estimate_rows(C2026, estimate_usage(1000, 500), at=NOON, cheapest=50)]
    assert not any(i.startswith("~") or i.endswith(":free") or i == "openrouter/auto" for i in ids)


def test_estimate_variable_and_served_names() -> None:
    rows = estimate_rows(C2026, estimate_usage(1000, 500), at=NOON, calls=10,
                         models=["openrouter/auto", "anthropic/claude-4.5-sonnet-20250929:nitro"], vs="openai/gpt-4o")
    assert rows == [
        {"model": "openrouter/auto", "name": "Auto Router", "per_call": None, "per_month": None,
         "vs openai/gpt-4o": "variable price"},
        {"model": "anthropic/claude-sonnet-4.5", "name": "Anthropic: Claude Sonnet 4.5", "per_call": D("0.0105"),
         "per_month": D("0.105"), "vs openai/gpt-4o": "1.4 times dearer"},
        # The reference's own row, added when it is not among the models asked for.
        {"model": "openai/gpt-4o", "name": "OpenAI: GPT-4o", "per_call": D("0.0075"), "per_month": D("0.075"),
         "vs openai/gpt-4o": "same"},
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": ["nope/x"]}, "unknown model: nope/x"),
        ({"models": ["openai/gpt-4o"], "vs": "nope/y"}, "unknown model: nope/y"),
        ({"models": ["openai/gpt-4o"], "vs": "openrouter/auto"}, "variable price"),
    ],
)
def test_estimate_user_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CliError, match=message):
        estimate_rows(C2026, estimate_usage(1, 1), at=NOON, **kwargs)


def test_estimate_usage_rejects_more_cached_than_input() -> None:
    with pytest.raises(CliError, match="--cached-input 2 is more than --input 1"):
        estimate_usage(1, 1, cached_input=2)


def test_summary_line() -> None:
    rows: list[dict[str, Any]] = [{"model": "a", "per_call": D("0.0075")}, {"model": "b", "per_call": D("0.000035")},
            {"model": "c", "per_call": None}, {"model": "d", "per_call": D(0)}]
    assert summary_line(rows) == "b is about 214 times cheaper than a"
    assert summary_line(rows[:1]) is None


def test_estimate_cli_json_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = run(capsys, "estimate", "--catalog", str(F2026), "--input", "1,000", "--output", "500",
              "--model", "openai/gpt-4o", "--format", "json")
    assert json.loads(out) == [{"model": "openai/gpt-4o", "name": "OpenAI: GPT-4o", "per_call": "0.0075"}]
    with pytest.raises(CliError, match="--catalog"):
        run(capsys, "estimate", "--catalog", str(tmp_path / "missing.json"), "--input", "1", "--output", "1")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CliError, match="--catalog"):
        run(capsys, "estimate", "--catalog", str(tmp_path / "bad.json"), "--input", "1", "--output", "1")


def test_estimate_defaults_to_the_embedded_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "estimate", "--input", "1000", "--output", "500", "--model", "anthropic/claude-sonnet-4.5",
              "--format", "csv")
    assert out.splitlines()[1] == "anthropic/claude-sonnet-4.5,Anthropic: Claude Sonnet 4.5,0.0105"


# ---------------------------------------------------------------- models


def test_models_search_sorts_by_input_price() -> None:
    rows = model_rows(C2026, search="SONNET")
    assert [(r["model"], r["input_per_1m"], r["output_per_1m"], r["cache_read_per_1m"], r["cache_write_per_1m"])
            for r in rows] == [
        ("anthropic/claude-sonnet-5:batch", D("1"), D("5"), D("0.1"), D("1.25")),
        ("anthropic/claude-sonnet-5", D("2"), D("10"), D("0.2"), D("2.5")),
        ("~anthropic/claude-sonnet-latest", D("2"), D("10"), D("0.2"), D("2.5")),
        ("anthropic/claude-sonnet-4.5", D("3"), D("15"), D("0.3"), D("3.75")),
    ]
    assert rows[-1]["note"] == "dearer above 200,000 prompt tokens"
    assert rows[-1]["context"] == 1_000_000


@pytest.mark.parametrize(
    ("catalog", "kwargs", "expected"),
    [
        (C2025, {"free": True}, ["google/gemini-flash-1.5-8b-exp", "meta-llama/llama-3.1-8b-instruct:free"]),
        (C2026, {"free": True}, ["thinkingmachines/inkling-small:free"]),
        (C2026, {"max_input_price": D("0.05")}, ["thinkingmachines/inkling-small:free",
                                                 "meta-llama/llama-3.1-8b-instruct"]),
        (C2026, {"max_input_price": D("0.0499")}, ["thinkingmachines/inkling-small:free"]),
        (C2026, {"search": "claude-sonnet-5", "sort": "output"}, ["anthropic/claude-sonnet-5:batch",
                                                                  "anthropic/claude-sonnet-5"]),
        (C2025, {"search": "gpt-4o", "sort": "blended"},
         ["openai/gpt-4o", "openai/gpt-4o-search-preview", "openai/gpt-4o:extended"]),
        (C2025, {"search": "auto", "sort": "input"}, ["openrouter/auto"]),
    ],
)
def test_models_filters(catalog: Catalog, kwargs: dict[str, Any], expected: list[str]) -> None:
    assert [r["model"] for r in model_rows(catalog, **kwargs)] == expected


def test_models_variable_sorts_last_and_has_no_prices() -> None:
    rows = model_rows(C2026, sort="output")
    assert rows[-1]["model"] == "openrouter/auto"
    assert (rows[-1]["input_per_1m"], rows[-1]["note"]) == (None, "variable price")
    by_context = model_rows(C2025, sort="context")
    assert by_context[0]["model"] == "openrouter/auto"  # 2,000,000 tokens
    assert [r["context"] for r in by_context] == sorted((r["context"] for r in by_context), reverse=True)


def test_models_notes() -> None:
    notes = {r["model"]: r["note"] for r in model_rows(C2026) + model_rows(C2025)}
    assert notes["deepseek/deepseek-v4-flash-vision-exp"] == "price varies by time of day"
    assert notes["openai/gpt-4o-search-preview"] == "$0.035 per request"


def test_models_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "models", "--catalog", str(F2025), "--search", "llama-3.1-8b")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["model", "name", "context", "input_per_1m"]
    assert lines[1].startswith("meta-llama/llama-3.1-8b-instruct:free ")
    assert "$0.02" in lines[2] and "$0.03" in lines[2]
    assert lines[-1].startswith("2 models; prices in USD per 1M tokens; prices as of ")


# ---------------------------------------------------------------- price history


def fp(prompt: str, completion: str) -> str:
    return pricing_fingerprint(pricing_from_json({"prompt": prompt, "completion": completion}))


HISTORY = [
    ("openai/gpt-4o", fp("0.0000025", "0.00001"), "2026-08-01T00:00:00.000000Z"),
    ("openai/gpt-4o", fp("0.000005", "0.00002"), "2026-01-01T00:00:00.000000Z"),
    ("x/steady", fp("0.000001", "0.000001"), "2026-01-01T00:00:00.000000Z"),
    ("x/broken", "{not json", "2026-01-01T00:00:00.000000Z"),
]


def test_price_changes() -> None:
    assert price_changes(HISTORY) == [
        {"changed_at": "2026-08-01 00:00", "model": "openai/gpt-4o", "input_per_1m_was": D(5),
         "input_per_1m": D("2.5"), "output_per_1m_was": D(20), "output_per_1m": D(10),
         "changed": "prompt, completion"},
    ]
    assert price_changes(HISTORY, search="steady") == []


@pytest.mark.parametrize(
    ("when", "prompt"),
    [
        (datetime(2025, 12, 1, tzinfo=timezone.utc), "0.000005"),  # before the first sighting: earliest known
        (datetime(2026, 1, 1, tzinfo=timezone.utc), "0.000005"),
        (datetime(2026, 7, 31, 23, 59, tzinfo=timezone.utc), "0.000005"),
        (datetime(2026, 8, 1, tzinfo=timezone.utc), "0.0000025"),
        (NOON, "0.0000025"),
    ],
)
def test_price_history_at(when: datetime, prompt: str) -> None:
    found = PriceHistory(HISTORY).at("openai/gpt-4o", when)
    assert found is not None and found.prompt == D(prompt)
    assert PriceHistory(HISTORY).at("x/none", when) is None


# ---------------------------------------------------------------- whatif


def record(n: int, at: datetime, model: str | None, usage: Usage | None, *, catalog: Catalog = C2026,
           reported: D | None = None, project: str = "web", session: str = "s1") -> UsageRecord:
    """A row as the recorder writes it: cost_catalog_usd priced at the time the request ran."""
    entry = catalog.get(model) if model else None
    cost = price(usage, entry.pricing, at) if usage and entry else None
    catalog_usd = cost.total if cost else None
    u = usage or Usage()
    return UsageRecord(
        id=f"r{n}", started_at=at, finished_at=at + timedelta(seconds=2), method="POST",
        endpoint="chat/completions", model_requested=model, model=model, provider=None, generation_id=None,
        key_fingerprint=None, key_alias=None, project=project, session=session, client=None, streamed=True,
        status=200, outcome=OK if usage else ABORTED, error=None,
        input_tokens=u.input_tokens, output_tokens=u.output_tokens, cached_tokens=u.cached_tokens,
        cache_write_tokens=u.cache_write_tokens, reasoning_tokens=u.reasoning_tokens,
        web_search_requests=u.web_search_requests,
        cost_usd=reported if reported is not None else catalog_usd, cost_reported_usd=reported,
        cost_catalog_usd=catalog_usd,
        cost_source=COST_REPORTED if reported is not None else (COST_CATALOG if catalog_usd is not None else COST_NONE),
        is_free=bool(entry and entry.is_free), is_byok=None, ttfb_ms=100.0, duration_ms=2000.0,
    )


def at(day: int, hhmm: str) -> datetime:
    h, m = map(int, hhmm.split(":"))
    return datetime(2026, 8, day, h, m, tzinfo=timezone.utc)


SONNET_SERVED = "anthropic/claude-4.5-sonnet-20250929"
DEEPSEEK_SERVED = "deepseek/deepseek-v4-flash-vision-exp-20260821"
MIXED = [
    record(1, at(24, "12:00"), SONNET_SERVED,
           Usage(input_tokens=1000, cached_tokens=800, cache_write_tokens=100, output_tokens=500),
           reported=D("0.0087")),
    record(2, at(24, "12:05"), SONNET_SERVED, Usage(input_tokens=200_001, output_tokens=1000, web_search_requests=1)),
    record(3, at(24, "00:30"), DEEPSEEK_SERVED, Usage(input_tokens=1_000_000, output_tokens=1_000_000)),
    record(4, at(24, "02:00"), DEEPSEEK_SERVED, Usage(input_tokens=1_000_000, output_tokens=1_000_000)),
    record(5, at(24, "13:00"), "openai/gpt-4o",
           Usage(input_tokens=5000, cached_tokens=4096, output_tokens=800, reasoning_tokens=300)),
    record(6, at(24, "13:30"), "thinkingmachines/inkling-small:free", Usage(input_tokens=900, output_tokens=90)),
    record(7, at(24, "14:00"), "openai/gpt-4o", None),  # aborted before any usage
    record(8, at(23, "09:00"), "meta-llama/llama-3.1-8b-instruct", Usage(input_tokens=3000, output_tokens=700),
           project="other", session="s2"),
]


def write_log(path: Path, records: list[UsageRecord], history: Sequence[tuple[str, str, str]] = ()) -> None:
    storage.prepare(path)
    db = sqlite3.connect(path)
    with db:
        columns = ", ".join(storage.REQUEST_COLUMNS)
        marks = ", ".join("?" for _ in storage.REQUEST_COLUMNS)
        db.executemany(f"INSERT INTO requests ({columns}) VALUES ({marks})",
                       [storage.encode_record(r) for r in records])
        db.executemany("INSERT INTO model_prices (model_id, pricing, first_seen_at) VALUES (?, ?, ?)", history)
    db.close()


def read_log(path: Path) -> list[LoggedRequest]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    rows = [logged_request(dict(r)) for r in db.execute("SELECT * FROM requests ORDER BY started_at")]
    db.close()
    return rows


def test_reprice_reproduces_the_logged_cost_of_each_model_used(tmp_path: Path) -> None:
    write_log(tmp_path / "u.db", MIXED)
    requests = read_log(tmp_path / "u.db")
    used = {r.model for r in requests if r.model}
    assert len(used) == 5
    for model in used:
        mine = [r for r in requests if r.model == model]
        total, unpriced, _ = reprice(mine, C2026, model)
        logged = sum((r.cost_catalog_usd for r in mine if r.cost_catalog_usd is not None), D(0))
        assert total == logged, model
        assert unpriced == sum(1 for r in mine if r.cost_catalog_usd is None)
    # the log holds what was hand-computed in test_pricing for the same traffic
    assert [r.cost_catalog_usd for r in requests if r.model == DEEPSEEK_SERVED] == [D("0.88"), D("1.76")]


def test_whatif_cli_on_mixed_traffic(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    write_log(db, MIXED)
    out = run(capsys, "whatif", "--db", str(db), "--catalog", str(F2026), "--model", SONNET_SERVED,
              "--model", "meta-llama/llama-3.1-8b-instruct", "--format", "json")
    rows = {r["scenario"]: r for r in json.loads(out)}
    logged_catalog = sum((r.cost_catalog_usd for r in MIXED if r.cost_catalog_usd is not None), D(0))
    actual = sum((r.cost_usd for r in MIXED if r.cost_usd is not None), D(0))
    assert D(rows["actual (as logged)"]["cost"]) == actual == logged_catalog - D("0.008415") + D("0.0087")
    assert D(rows["actual at catalog prices"]["cost"]) == logged_catalog
    assert rows["actual (as logged)"]["unpriced"] == 1
    sonnet = C2026.get(SONNET_SERVED)
    assert sonnet is not None
    expected = sum((c.total for r in MIXED if (c := price(_usage(r), sonnet.pricing, r.started_at))), D(0))
    assert D(rows["all on anthropic/claude-sonnet-4.5"]["cost"]) == expected
    assert rows["all on anthropic/claude-sonnet-4.5"]["unpriced"] == 1
    assert "all on meta-llama/llama-3.1-8b-instruct" in rows


def _usage(r: UsageRecord) -> Usage:
    return Usage(input_tokens=r.input_tokens, output_tokens=r.output_tokens, cached_tokens=r.cached_tokens,
                 cache_write_tokens=r.cache_write_tokens, reasoning_tokens=r.reasoning_tokens,
                 web_search_requests=r.web_search_requests)


ROUTE_TRAFFIC = [
    record(1, NOON, "openai/gpt-4o", Usage(input_tokens=1000, output_tokens=500)),
    record(2, NOON, "openai/gpt-4o", Usage(input_tokens=2000, output_tokens=1000)),
]


def test_whatif_routing_scenario_by_hand(tmp_path: Path) -> None:
    write_log(tmp_path / "u.db", ROUTE_TRAFFIC)
    requests = read_log(tmp_path / "u.db")
    rows = whatif_rows(requests, C2026, ["meta-llama/llama-3.1-8b-instruct", "openai/gpt-4o"],
                       Route("meta-llama/llama-3.1-8b-instruct", "openai/gpt-4o", D("0.15")))
    assert [(r["scenario"], r["cost"], r["vs actual"]) for r in rows] == [
        ("actual (as logged)", D("0.0225"), ""),
        ("actual at catalog prices", D("0.0225"), "same"),
        ("all on meta-llama/llama-3.1-8b-instruct", D("0.00027"), "83 times cheaper"),
        ("all on openai/gpt-4o", D("0.0225"), "same"),
        # 0.85 x 0.00027 + 0.15 x 0.0225
        ("route meta-llama/llama-3.1-8b-instruct, 15% to openai/gpt-4o", D("0.0036045"), "6.2 times cheaper"),
    ]


def test_whatif_uses_the_price_in_force_when_each_request_ran(tmp_path: Path) -> None:
    old = pricing_from_json({"prompt": "0.000005", "completion": "0.00002"})
    june = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
    logged_in_june = record(1, june, "openai/gpt-4o", Usage(input_tokens=1000, output_tokens=500))
    logged_in_june = logged_in_june.__class__(**{
        **{f: getattr(logged_in_june, f) for f in storage.REQUEST_COLUMNS},
        "cost_catalog_usd": price(_usage(logged_in_june), old, june).total,  # type: ignore[union-attr]
        "cost_usd": D("0.015"),
    })
    traffic = [logged_in_june, record(2, NOON, "openai/gpt-4o", Usage(input_tokens=1000, output_tokens=500))]
    write_log(tmp_path / "u.db", traffic, [
        ("openai/gpt-4o", pricing_fingerprint(old), "2026-01-01T00:00:00.000000Z"),
        ("openai/gpt-4o", pricing_fingerprint(C2026.get("openai/gpt-4o").pricing),  # type: ignore[union-attr]
         "2026-08-01T00:00:00.000000Z"),
    ])
    requests = read_log(tmp_path / "u.db")
    db = sqlite3.connect(tmp_path / "u.db")
    history = PriceHistory(db.execute("SELECT model_id, pricing, first_seen_at FROM model_prices").fetchall())
    db.close()
    assert reprice(requests, C2026, "openai/gpt-4o", history)[0] == D("0.0225")  # 0.015 + 0.0075
    assert reprice(requests, C2026, "openai/gpt-4o")[0] == D("0.015")  # today's price for both


def test_whatif_cli_filters(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    write_log(db, MIXED)

    def requests_seen(*extra: str) -> int:
        out = run(capsys, "whatif", "--db", str(db), "--catalog", str(F2026), "--model", "openai/gpt-4o",
                  "--format", "json", *extra)
        return int(json.loads(out)[0]["requests"])

    assert requests_seen() == 8
    assert requests_seen("--project", "other") == 1
    assert requests_seen("--session", "s1") == 7
    assert requests_seen("--since", "2026-08-24") == 7
    assert requests_seen("--since", "2026-08-24T12:01:00+00:00") == 4
    assert requests_seen("--project", "web", "--since", "2026-08-24T13:00") == 3


def test_whatif_cli_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(CliError, match="no such file"):
        run(capsys, "whatif", "--db", str(tmp_path / "none.db"), "--model", "openai/gpt-4o")
    write_log(tmp_path / "u.db", [])
    with pytest.raises(CliError, match="at least one --model"):
        run(capsys, "whatif", "--db", str(tmp_path / "u.db"))
    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(CliError, match="no such table"):
        run(capsys, "whatif", "--db", str(tmp_path / "empty.db"), "--model", "openai/gpt-4o")


def test_whatif_never_writes_the_log(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    write_log(db, MIXED)
    before = db.read_bytes()
    run(capsys, "whatif", "--db", str(db), "--catalog", str(F2026), "--model", "openai/gpt-4o")
    assert db.read_bytes() == before


def test_models_changes_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    write_log(tmp_path / "u.db", [], [h for h in HISTORY if h[0] != "x/broken"])
    out = run(capsys, "models", "--changes", "--db", str(tmp_path / "u.db"), "--format", "csv")
    assert out.splitlines() == [
        "changed_at,model,input_per_1m_was,input_per_1m,output_per_1m_was,output_per_1m,changed",
        '2026-08-01 00:00,openai/gpt-4o,5,2.5,20,10,"prompt, completion"',
    ]


def test_parse_route() -> None:
    assert parse_route("cheap=a/b, flagship=c/d:nitro, escalate=0.15") == Route("a/b", "c/d:nitro", D("0.15"))


@pytest.mark.parametrize(
    "text",
    ["cheap=a/b,flagship=c/d", "cheap=a/b,flagship=c/d,escalate=2", "cheap=a/b,flagship=c/d,escalate=lots",
     "cheap=a/b,flagship=c/d,escalate=0.1,extra=1", "a/b,c/d,0.1"],
)
def test_parse_route_errors(text: str) -> None:
    with pytest.raises(CliError, match="--route"):
        parse_route(text)
