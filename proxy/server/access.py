"""The access line: one per finished request (method, endpoint, model, status, tokens, cost, ms).

Through logging, a line costs a LogRecord, the handler's lock, a formatter and a flush: about 5%
of the proxy's instructions per request. When the line would reach, unfiltered, exactly one
plain StreamHandler whose formatter writes `asctime levelname name message` (what `serve` sets
up), `AccessLog` writes that same text to the handler's stream itself. Any other set-up (a
filter, a second handler, another format, pytest's capture) goes through logging as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from proxy.store import records
from proxy.store.records import UsageRecord

# The serve command's format (proxy/cli/logline.py), and logging.basicConfig's.
LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def access_line(rec: UsageRecord) -> str:
    """method, endpoint, model, status, tokens, cost, ms: never a key, a prompt or a header."""
    tokens = "-" if rec.input_tokens is None and rec.output_tokens is None else f"{rec.input_tokens or 0}+{rec.output_tokens or 0}tok"
    cost = "-" if rec.cost_usd is None else f"${rec.cost_usd:.6f}"
    outcome = "" if rec.outcome == records.OK else f" {rec.outcome}"
    return f"{rec.method} /{rec.endpoint.lstrip('/')} {rec.model or rec.model_requested or '-'} {rec.status}{outcome} {tokens} {cost} {rec.duration_ms:.0f}ms"


class _Stamp:
    """What Formatter.formatTime reads of a record."""

    __slots__ = ("created", "msecs")

    def __init__(self, created: float) -> None:
        self.created = created
        self.msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord sets it


class AccessLog:
    def __init__(self, logger: logging.Logger | None = None, clock: Callable[[], float] = time.time) -> None:
        self.logger = logger if logger is not None else logging.getLogger("proxy.access")
        self._clock = clock

    def write(self, rec: UsageRecord) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = direct_handler(logger)
        if handler is None:
            # As logger.info() would, minus its walk up the stack for the caller's file and line.
            logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, access_line(rec), (), None))
            return
        formatter = handler.formatter
        assert formatter is not None
        created = self._clock()
        text = f"{formatter.formatTime(_Stamp(created))} INFO {logger.name} {access_line(rec)}{handler.terminator}"  # type: ignore[arg-type]
        with handler.lock:  # type: ignore[union-attr]
            try:
                handler.stream.write(text)
                handler.flush()
            except Exception:  # noqa: BLE001 - as StreamHandler.emit: a broken stderr must not break the request
                record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, access_line(rec), (), None)
                record.created = created
                handler.handleError(record)



def direct_handler(logger: logging.Logger) -> logging.StreamHandler | None:  # type: ignore[type-arg]
    """The one handler an INFO line of `logger` reaches, if writing to it directly gives logging's text."""
    if logger.filters or logger.disabled:
        return None
    found: logging.Handler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if handler.level > logging.INFO:
                continue
            if found is not None:
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    if found is None or type(found) is not logging.StreamHandler or found.filters or found.lock is None:
        return None
    formatter = found.formatter
    if (
        formatter is None
        or type(formatter).format is not logging.Formatter.format
        or type(formatter).formatMessage is not logging.Formatter.formatMessage
        or type(formatter._style) is not logging.PercentStyle
        or formatter._fmt != LINE_FORMAT
        or formatter.datefmt is not None
    ):
        return None
    return found
