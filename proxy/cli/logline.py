"""The serve command's log lines: the text logging's own formatter writes, for less work per line.

With the access log on, every request writes a line, so its cost is a share of the proxy's CPU.
"""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class LineFormatter(logging.Formatter):
    """`%(asctime)s` exactly as logging.Formatter writes it, but the date and time are formatted once
    per second rather than for every line."""

    def __init__(self, fmt: str = FORMAT) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"  # logging's default_msec_format, "%s,%03d"


def setup_logging() -> None:
    """Lines on stderr at INFO, as logging.basicConfig(format=FORMAT) would give."""
    # The format names no thread or process: LogRecord then need not look them up for every line.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
