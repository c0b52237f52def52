"""What the CLI prints: dollar amounts, aligned text tables, and rows as table, JSON or CSV.

The one place money is formatted for people, so `report`, `budgets`, the calculator and the
proxy's budget messages all show the same amount the same way.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

Row = dict[str, Any]
SPEND_PLACES = 6
_ONE = Decimal(1)
_CENT = Decimal("0.01")


def money(amount: Decimal, *, exact: bool = False) -> str:
    """Dollars with thousands separators and at least cents: '$7,500.00', '$0.0062', '-$0.50'.

    Spend is rounded to cents from $1 up and to at most six places below, so a $0.01 budget and a
    single cheap call still show their digits. `exact` shows every digit: catalog prices are exact, and
    rounding them would make different models look alike.
    """
    if not exact:
        amount = amount.quantize(_CENT if abs(amount) >= _ONE else _ONE.scaleb(-SPEND_PLACES))
    q = amount.normalize()
    if q.as_tuple().exponent > -2:  # type: ignore[operator]
        q = amount.quantize(_CENT)
    text = format(abs(q), ",f")
    return f"-${text}" if q < 0 else f"${text}"


def plain(d: Decimal) -> str:
    """Exact and machine-readable: no exponent, no trailing zeros."""
    s = format(d.normalize(), "f")
    return "0" if s in ("0", "-0") else s


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[bool] | None = None,
    rule: bool = True,
    total: bool = False,
) -> str:
    """Columns two spaces apart; `right` says which are right-aligned (default: all but the first).

    With `rule` a line of dashes sits under the headers; with `total` one also sets the last row apart.
    """
    align = list(right) if right is not None else [False, *(True for _ in headers[1:])]
    try:
        widths, head, body = _format_strings(headers, rows, align)
    except TypeError:  # a cell that is not a string
        widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

        def line(cells: Sequence[Any]) -> str:
            return "  ".join(str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, align)).rstrip()

        body = [line(r) for r in rows]
        head = line(headers)
    dashes = "  ".join("-" * w for w in widths)
    if total and rows:
        body.insert(len(body) - 1, dashes)
    return "\n".join([head, *([dashes] if rule else []), *body])


def _format_strings(
    headers: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[bool]
) -> tuple[list[int], str, list[str]]:
    """format_table's work when every cell is a string and every row as wide as the headers, mostly
    in C: a session report's 30,000 lines take one str.format call each."""
    if len(align) < len(headers) or any(len(r) != len(headers) for r in rows):
        raise TypeError("ragged rows")
    widths = [max(map(len, column)) for column in zip(map(str, headers), *rows)]
    template = "  ".join(f"{{:{'>' if r else '<'}{w}}}" for w, r in zip(widths, align))
    # A cell that is not a string (an int, a Decimal, None) has no len() or takes no width: TypeError.
    return widths, template.format(*map(str, headers)).rstrip(), [template.format(*r).rstrip() for r in rows]


def render(rows: Sequence[Row], fmt: str) -> str:
    """Rows of one shape as `table`, `json` or `csv`; Decimals are exact, None is '-' or empty."""
    if fmt == "json":
        return json.dumps([{k: _json_value(v) for k, v in r.items()} for r in rows], indent=2) + "\n"
    if not rows:
        return "" if fmt == "csv" else "(no rows)\n"
    columns = list(rows[0])
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows([[_csv_value(r.get(c)) for c in columns] for r in rows])
        return buf.getvalue()
    cells = [[_table_value(r.get(c)) for c in columns] for r in rows]
    numeric = [all(isinstance(r.get(c), (int, Decimal)) or r.get(c) is None for r in rows) for c in columns]
    return format_table(columns, cells, right=numeric, rule=False) + "\n"


def _json_value(v: Any) -> Any:
    return plain(v) if isinstance(v, Decimal) else v


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    return plain(v) if isinstance(v, Decimal) else str(v)


def _table_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, Decimal):
        return money(v, exact=True)
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
