"""What budgets say: the spent / held / warn / projected messages, and the key that makes an alert fire once.

Pure functions over a spec and a status; `shown` is the scope value as people know it (a key's alias).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from proxy.budgets.spec import BudgetSpec, as_utc
from proxy.tables import money

if TYPE_CHECKING:
    from proxy.budgets.ledger import BudgetStatus

# (budget name, scope value, window start as UTC ISO-8601, kind, threshold) - the alerts table's key.
AlertKey = tuple[str, str, str, str, str]

_ONE = Decimal(1)


def alert_key(budget: str, scope_value: str, window_start: datetime, kind: str, threshold: Decimal) -> AlertKey:
    return (budget, scope_value, window_start.astimezone(UTC).isoformat(), kind, threshold_text(threshold))


def threshold_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def percent(share: Decimal) -> str:
    return f"{(share * 100).quantize(_ONE):f}%"


def when(moment: datetime, tz: ZoneInfo) -> str:
    return f"{moment.astimezone(tz):%Y-%m-%d %H:%M} {tz.key}"


def subject(spec: BudgetSpec, shown: str) -> str:
    return "" if spec.scope == "total" else f" for {spec.scope} {shown}"


def spent_message(spec: BudgetSpec, status: BudgetStatus, tz: ZoneInfo, shown: str) -> str:
    head = (
        f"openrouter-spend: budget '{spec.name}' is spent{subject(spec, shown)}: "
        f"{money(status.spent_usd)} of {money(spec.limit_usd)} {spec.period_phrase}"
    )
    if status.resets_at is None:
        return head
    if spec.rolling_seconds is None:
        return f"{head}; resets {when(status.resets_at, tz)}"
    return f"{head}; enough spend ages out by {when(status.resets_at, tz)}"


def held_message(spec: BudgetSpec, status: BudgetStatus, shown: str) -> str:
    return (
        f"openrouter-spend: budget '{spec.name}'{subject(spec, shown)} is taken up by "
        f"{status.in_flight} request(s) in flight: {money(status.spent_usd)} spent and "
        f"{money(status.reserved_usd)} reserved of {money(spec.limit_usd)} {spec.period_phrase}; "
        f"retry when they finish"
    )


def warn_message(spec: BudgetSpec, status: BudgetStatus, threshold: Decimal, tz: ZoneInfo, shown: str) -> str:
    tail = "" if status.resets_at is None else f"; resets {when(status.resets_at, tz)}"
    return (
        f"openrouter-spend: budget '{spec.name}'{subject(spec, shown)} is at "
        f"{percent(status.share)} ({money(status.spent_usd)} of {money(spec.limit_usd)} "
        f"{spec.period_phrase}), past the {percent(threshold)} warning{tail}"
    )


def projected_message(spec: BudgetSpec, status: BudgetStatus, now: datetime, tz: ZoneInfo, shown: str) -> str:
    assert status.projected_usd is not None and status.resets_at is not None
    now_u = as_utc(now)
    rate = status.spent_usd / Decimal(str((now_u - as_utc(status.window_start)).total_seconds()))
    out_at = now_u + timedelta(seconds=float((spec.limit_usd - status.spent_usd) / rate))
    return (
        f"openrouter-spend: budget '{spec.name}'{subject(spec, shown)} is on course to "
        f"run out: {money(status.spent_usd)} of {money(spec.limit_usd)} {spec.period_phrase}, "
        f"{money(status.projected_usd)} by {when(status.resets_at, tz)} at this rate; "
        f"spent by about {when(out_at, tz)}"
    )
