"""The serve command's line formatter writes exactly what logging.Formatter writes."""

from __future__ import annotations

import logging

import pytest

from proxy.cli.logline import FORMAT, LineFormatter


@pytest.mark.parametrize(
    "created",
    # Within one second, across a second, a minute and a day boundary, and the same second again.
    [1764669600.0, 1764669600.25, 1764669600.999, 1764669601.0, 1764669659.5, 1764669660.001, 1764719999.9999,
     1764720000.0, 1764669600.5],
)
def test_same_text_as_logging_formatter(created: float) -> None:
    standard, ours = logging.Formatter(FORMAT), LineFormatter()
    for when in (created - 1.5, created):  # ours remembers the previous second: change it first
        record = logging.LogRecord("proxy.access", logging.INFO, __file__, 1, "POST /chat/completions %s", ("x",), None)
        record.created = when
        record.msecs = int((when - int(when)) * 1000) + 0.0
        assert ours.format(record) == standard.format(record)


def test_an_explicit_date_format_is_honoured() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    assert LineFormatter().formatTime(record, "%Y") == logging.Formatter().formatTime(record, "%Y")
