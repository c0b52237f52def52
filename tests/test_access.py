"""The access line written straight to serve's stream is the text logging would have written; any
other logging set-up (filters, more handlers, another format) still goes through logging."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from proxy.cli.logline import FORMAT, LineFormatter
from proxy.server.access import AccessLog, access_line, direct_handler
from proxy.store.records import UsageRecord

NOW = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)


def _rec(**changes: object) -> UsageRecord:
    values: dict[str, object] = {
        "id": "r1", "started_at": NOW, "finished_at": NOW, "method": "POST", "endpoint": "chat/completions", "model_requested": "openai/gpt-4o",
        "model": "openai/gpt-4o", "provider": "OpenAI", "generation_id": "gen-1", "key_fingerprint": None, "key_alias": None, "project": None,
        "session": None, "client": None, "streamed": False, "status": 200, "outcome": "ok", "error": None, "input_tokens": 1200, "output_tokens": 300,
        "cached_tokens": 200, "cache_write_tokens": 0, "cache_write_1h_tokens": None, "reasoning_tokens": 0, "web_search_requests": None,
        "cost_usd": Decimal("0.00575"), "cost_reported_usd": Decimal("0.00575"), "cost_catalog_usd": None, "cost_source": "reported",
        "is_free": False, "is_byok": False, "upstream_cost_usd": None, "ttfb_ms": 1.0, "duration_ms": 2.6,
    }
    values.update(changes)
    return UsageRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
def tree() -> Iterator[tuple[logging.Logger, logging.Logger, logging.StreamHandler[io.StringIO]]]:
    """A private logger tree shaped like serve's: root handler with the line formatter, `proxy.access` under it."""
    root = logging.getLogger("test_access_root")
    root.propagate = False
    root.setLevel(logging.INFO)
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(LineFormatter())
    root.addHandler(handler)
    access = logging.getLogger("test_access_root.proxy.access")
    yield root, access, handler
    root.removeHandler(handler)
    for logger in (root, access):
        logger.filters.clear()
        for extra in list(logger.handlers):
            logger.removeHandler(extra)


@pytest.mark.parametrize("created", [1764687600.0, 1764687600.0999, 1764687600.5, 1764687659.999])
@pytest.mark.parametrize("formatter", [LineFormatter, lambda: logging.Formatter(FORMAT)])
def test_direct_line_is_loggings_text(tree: tuple[logging.Logger, logging.Logger, logging.StreamHandler[io.StringIO]],
                                      created: float, formatter: object) -> None:
    _, access, handler = tree
    handler.setFormatter(formatter())  # type: ignore[operator]
    assert direct_handler(access) is handler
    rec = _rec(outcome="aborted", input_tokens=None, output_tokens=None, cost_usd=None)
    AccessLog(access, clock=lambda: created).write(rec)
    record = logging.LogRecord(access.name, logging.INFO, __file__, 0, access_line(rec), (), None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    assert handler.stream.getvalue() == logging.Formatter(FORMAT).format(record) + "\n"


def test_line_text() -> None:
    assert access_line(_rec()) == "POST /chat/completions openai/gpt-4o 200 1200+300tok $0.005750 3ms"
    assert access_line(_rec(outcome="aborted", input_tokens=None, output_tokens=None, cost_usd=None, model=None)) == (
        "POST /chat/completions openai/gpt-4o 200 aborted - - 3ms"
    )


def _drop_all(record: logging.LogRecord) -> bool:
    return False


def test_other_setups_go_through_logging(tree: tuple[logging.Logger, logging.Logger, logging.StreamHandler[io.StringIO]]) -> None:
    _, access, handler = tree
    log = AccessLog(access)
    handler.addFilter(_drop_all)  # a filter on the handler is honoured
    assert direct_handler(access) is None
    log.write(_rec())
    assert handler.stream.getvalue() == ""
    handler.removeFilter(_drop_all)

    access.addFilter(_drop_all)  # and one on the logger
    assert direct_handler(access) is None
    log.write(_rec())
    assert handler.stream.getvalue() == ""
    access.removeFilter(_drop_all)

    second = logging.StreamHandler(io.StringIO())  # two handlers: each gets the line, through logging
    second.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(second)
    assert direct_handler(access) is None
    log.write(_rec())
    assert second.stream.getvalue() == access_line(_rec()) + "\n"
    assert handler.stream.getvalue().endswith(" INFO test_access_root.proxy.access " + access_line(_rec()) + "\n")
    access.removeHandler(second)

    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))  # another format
    assert direct_handler(access) is None
    access.setLevel(logging.WARNING)  # --quiet: nothing at all
    before = handler.stream.getvalue()
    log.write(_rec())
    assert handler.stream.getvalue() == before
    access.setLevel(logging.NOTSET)


def test_caplog_sees_the_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        AccessLog().write(_rec())
    assert [r.getMessage() for r in caplog.records if r.name == "proxy.access"] == [access_line(_rec())]
