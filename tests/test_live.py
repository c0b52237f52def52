"""proxy.store.live: the live views' sums are exact (integer pico-dollars in SQL) and match a
Decimal sum of the stored text, for awkward amounts too."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from proxy.store import live
from proxy.store.sqlite import REQUEST_COLUMNS, encode_time, prepare

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _db(tmp_path: Path, costs: list[str | None], project: str = "p") -> Path:
    path = tmp_path / "live.db"
    prepare(path)
    rows = []
    for n, cost in enumerate(costs):
        values = dict.fromkeys(REQUEST_COLUMNS)
        values.update(id=f"r{n}", started_at=encode_time(T0 + timedelta(seconds=n)), finished_at=encode_time(T0 + timedelta(seconds=n)),
                      method="POST", endpoint="chat/completions", streamed=0, status=200, outcome="ok", cost_usd=cost,
                      cost_source="reported", is_free=0, duration_ms=1.0, project=project, session=f"s{n % 3}")
        rows.append(tuple(values[c] for c in REQUEST_COLUMNS))
    with sqlite3.connect(path) as db:
        db.executemany(f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})", rows)
    return path


def test_sums_equal_the_decimal_sum_of_the_rows(tmp_path: Path) -> None:
    rng = random.Random(3)
    costs: list[str | None] = ["0.0000000375", "0.000000000001", "4499.999999999999", "0.1", "0.2", None, "0"]
    costs += [format(Decimal(rng.randint(1, 10**12)).scaleb(-12), "f") for _ in range(2000)]
    path = _db(tmp_path, costs)
    db = live.connect(path)
    assert db is not None
    try:
        expected = sum((Decimal(c) for c in costs if c is not None), Decimal(0))
        assert live.spend_since(db, T0) == expected
        assert live.spend_since(db, T0, project="p") == expected
        assert live.spend_since(db, T0, project="other") == 0
        later = sum((Decimal(c) for c in costs[100:] if c is not None), Decimal(0))
        assert live.spend_since(db, T0 + timedelta(seconds=100)) == later
        assert live.spend_since(db, T0, T0 + timedelta(seconds=3)) == Decimal("4500.0000000375")
        session = live.session_spend(db, "s0")
        assert session.cost_usd == sum((Decimal(c) for c in costs[::3] if c is not None), Decimal(0))
        assert session.requests == len(costs[::3]) and session.project == "p"
    finally:
        db.close()


def test_no_database_is_none(tmp_path: Path) -> None:
    assert live.connect(tmp_path / "none.db") is None
    assert not (tmp_path / "none.db").exists()
