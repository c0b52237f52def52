from __future__ import annotations

import csv
import io
import json
from decimal import Decimal as D
from typing import Any

import pytest

from proxy.tables import format_table, money, plain, render


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("5.02", "$5.02"),
        ("5", "$5.00"),
        ("0.5", "$0.50"),
        ("0", "$0.00"),
        ("0.01", "$0.01"),
        # A $0.01 budget: "$0.012 of $0.01", not "$0.01 of $0.01".
        ("0.012", "$0.012"),
        ("0.0062", "$0.0062"),
        # One cheap call in the report never shows as $0.00.
        ("0.000035", "$0.000035"),
        ("0.00001", "$0.00001"),
        ("0.0000004", "$0.00"),
        ("0.1234567", "$0.123457"),
        ("0.9999999", "$1.00"),
        ("123.456", "$123.46"),
        ("7500", "$7,500.00"),
        ("1234567.891", "$1,234,567.89"),
        ("-0.5", "-$0.50"),
        ("-0.0000001", "$0.00"),
        ("4E-7", "$0.00"),
    ],
)
def test_money_rounds_spend(amount: str, text: str) -> None:
    assert money(D(amount)) == text


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("0.000035", "$0.000035"),
        ("35", "$35.00"),
        ("35.000000", "$35.00"),
        ("7500", "$7,500.00"),
        ("0.0075", "$0.0075"),
        ("0", "$0.00"),
        ("0.1", "$0.10"),
        ("1234567.891", "$1,234,567.891"),
        ("-0.5", "-$0.50"),
        ("2.08333333333333E-8", "$0.0000000208333333333333"),
    ],
)
def test_money_exact_shows_every_digit(amount: str, text: str) -> None:
    assert money(D(amount), exact=True) == text


@pytest.mark.parametrize(
    ("amount", "text"),
    [("7500", "7500"), ("7.500", "7.5"), ("0", "0"), ("-0.00", "0"), ("1.23E-7", "0.000000123"), ("1E+3", "1000")],
)
def test_plain(amount: str, text: str) -> None:
    assert plain(D(amount)) == text


def test_format_table_aligns_and_sets_the_total_apart() -> None:
    rows = [("a/long-model", "1", "$0.50"), ("b", "1,000", "$12.00"), ("total", "1,001", "$12.50")]
    assert format_table(("model", "calls", "cost"), rows, total=True).splitlines() == [
        "model         calls    cost",
        "------------  -----  ------",
        "a/long-model      1   $0.50",
        "b             1,000  $12.00",
        "------------  -----  ------",
        "total         1,001  $12.50",
    ]


def test_format_table_alignment_by_column_without_rule() -> None:
    rows = [("x", "3", "a note"), ("yy", "10", "")]
    assert format_table(("id", "n", "note"), rows, right=[False, True, False], rule=False).splitlines() == [
        "id   n  note",
        "x    3  a note",
        "yy  10",
    ]


def test_render_formats() -> None:
    rows = [{"model": "a/b", "context": 128000, "price": D("7500"), "free": True, "note": None}]
    assert json.loads(render(rows, "json")) == [
        {"model": "a/b", "context": 128000, "price": "7500", "free": True, "note": None}]
    assert list(csv.reader(io.StringIO(render(rows, "csv")))) == [
        ["model", "context", "price", "free", "note"], ["a/b", "128000", "7500", "True", ""]]
    table = render(rows, "table").splitlines()
    assert table[1].split() == ["a/b", "128,000", "$7,500.00", "yes", "-"]
    assert render([], "table") == "(no rows)\n" and render([], "json") == "[]\n" and render([], "csv") == ""


def test_render_table_right_aligns_numeric_columns() -> None:
    rows: list[dict[str, Any]] = [{"model": "a", "per_call": D("0.5"), "calls": 7}, {"model": "bbb", "per_call": None, "calls": 1000}]
    assert render(rows, "table") == (
        "model  per_call  calls\n"
        "a         $0.50      7\n"
        "bbb           -  1,000\n"
    )
