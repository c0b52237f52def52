"""Checks that turn an upstream's JSON numbers into counts and money, or None when they are nonsense."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

# No single request carries more; a bigger number is a bug upstream, not usage.
MAX_TOKENS = 100_000_000
MAX_COST_USD = Decimal(100_000)


def count(value: Any) -> int | None:
    if type(value) is int:  # the usual case first (a bool is not one: its type is bool)
        return value if 0 <= value <= MAX_TOKENS else None
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def money(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0 or amount > MAX_COST_USD:
        return None
    return amount


def text(value: Any, limit: int = 200) -> str | None:
    if isinstance(value, str) and value:
        return value[:limit]
    return None


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def error_code(error: Any) -> str:
    """A short label for an upstream error object: its code, else its type, else 'error'."""
    if isinstance(error, dict):
        for key in ("code", "type"):
            value = error.get(key)
            if isinstance(value, int | str) and not isinstance(value, bool) and str(value):
                return str(value)[:64]
    return "error"


def part_of(part: int | None, whole: int | None) -> int | None:
    """A part larger than its whole is nonsense: keep it unknown rather than price it."""
    if part is None or whole is None or part <= whole:
        return part
    return None
