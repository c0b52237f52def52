"""budget_messages: alert keys, percent and time phrasing, and each message built from plain values."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal as D

import pytest

from proxy.budgets.messages import alert_key, held_message, percent, projected_message, spent_message, warn_message, when
from proxy.budgets.spec import BudgetSpec
from proxy.budgets.ledger import BudgetStatus
from tests.test_budget_spec import BERLIN, UTC, at, spec


def status(s: BudgetSpec, spent: str, **kw: object) -> BudgetStatus:
    base: dict[str, object] = {
        "name": s.name,
        "scope": s.scope,
        "scope_value": "",
        "action": s.action,
        "period": s.period_label,
        "limit_usd": s.limit_usd,
        "spent_usd": D(spent),
        "reserved_usd": D(0),
        "in_flight": 0,
        "share": D(spent) / s.limit_usd,
        "remaining_usd": max(D(0), s.limit_usd - D(spent)),
        "window_start": at(2026, 11, 27),
        "window_end": at(2026, 11, 28),
        "resets_at": at(2026, 11, 28),
        "projected_usd": None,
    }
    base.update(kw)
    return BudgetStatus(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("start", "threshold", "key"),
    [
        (at(2026, 11, 27), D("0.50"), ("d", "", "2026-11-26T23:00:00+00:00", "warn", "0.5")),
        (datetime(2026, 11, 26, 23, tzinfo=UTC), D("0.5"), ("d", "", "2026-11-26T23:00:00+00:00", "warn", "0.5")),
        (at(2026, 7, 1), D("1.00"), ("d", "", "2026-06-30T22:00:00+00:00", "warn", "1")),
        (at(2026, 7, 1), D("0.125"), ("d", "", "2026-06-30T22:00:00+00:00", "warn", "0.125")),
    ],
)
def test_alert_key_is_stable_across_timezones_and_trailing_zeros(start: datetime, threshold: D, key: tuple[str, ...]) -> None:
    assert alert_key("d", "", start, "warn", threshold) == key


@pytest.mark.parametrize(
    ("share", "text"),
    [(D("0.5"), "50%"), (D("1.004"), "100%"), (D("0.805"), "80%"), (D("0.815"), "82%"), (D("2"), "200%"), (D(0), "0%")],
)
def test_percent(share: D, text: str) -> None:
    assert percent(share) == text


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (at(2026, 11, 28), "2026-11-28 00:00 Europe/Berlin"),
        (datetime(2026, 11, 27, 23, 5, 59, tzinfo=UTC), "2026-11-28 00:05 Europe/Berlin"),
        (datetime(2026, 7, 1, 12, tzinfo=UTC), "2026-07-01 14:00 Europe/Berlin"),
    ],
)
def test_when(moment: datetime, text: str) -> None:
    assert when(moment, BERLIN) == text


@pytest.mark.parametrize(
    ("s", "st", "shown", "text"),
    [
        (spec(), status(spec(), "5.02"), "", "openrouter-spend: budget 'daily' is spent: $5.02 of $5.00 today; resets 2026-11-28 00:00 Europe/Berlin"),
        (spec(), status(spec(), "5", resets_at=None), "", "openrouter-spend: budget 'daily' is spent: $5.00 of $5.00 today"),
        (
            spec(scope="key"),
            status(spec(scope="key"), "6", scope_value="fp1"),
            "laptop",
            "openrouter-spend: budget 'daily' is spent for key laptop: $6.00 of $5.00 today; resets 2026-11-28 00:00 Europe/Berlin",
        ),
        (
            spec(period="rolling", rolling_seconds=3600),
            status(spec(period="rolling", rolling_seconds=3600), "5", resets_at=at(2026, 11, 27, 10, 30)),
            "",
            "openrouter-spend: budget 'daily' is spent: $5.00 of $5.00 in the last 1h; enough spend ages out by 2026-11-27 10:30 Europe/Berlin",
        ),
    ],
)
def test_spent_message(s: BudgetSpec, st: BudgetStatus, shown: str, text: str) -> None:
    assert spent_message(s, st, BERLIN, shown) == text


def test_held_message() -> None:
    s = spec(scope="session")
    st = status(s, "4", scope_value="s1", reserved_usd=D("1.5"), in_flight=3)
    assert held_message(s, st, "s1") == (
        "openrouter-spend: budget 'daily' for session s1 is taken up by 3 request(s) in flight: "
        "$4.00 spent and $1.50 reserved of $5.00 today; retry when they finish"
    )


def test_warn_message() -> None:
    assert warn_message(spec(), status(spec(), "4.1"), D("0.8"), BERLIN, "") == (
        "openrouter-spend: budget 'daily' is at 82% ($4.10 of $5.00 today), past the 80% warning; resets 2026-11-28 00:00 Europe/Berlin"
    )
    rolling = spec(period="rolling", rolling_seconds=3600)
    assert warn_message(rolling, status(rolling, "2.5", resets_at=None), D("0.5"), BERLIN, "").endswith("past the 50% warning")


def test_projected_message_says_when_it_runs_out_at_this_rate() -> None:
    s = spec(limit_usd=D(10))
    # $3 in the first 7 hours: $10 is reached after 23h20m
    st = status(s, "3", projected_usd=D("10.29"))
    assert projected_message(s, st, at(2026, 11, 27, 7), BERLIN, "") == (
        "openrouter-spend: budget 'daily' is on course to run out: $3.00 of $10.00 today, "
        "$10.29 by 2026-11-28 00:00 Europe/Berlin at this rate; spent by about 2026-11-27 23:20 Europe/Berlin"
    )
