"""Warnings that would repeat on every request (cost drift, a warn-only budget that is spent) are
logged the first time, then at most once a minute per kind, with how many were held back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

_MAX_KEYS = 1024  # keys are models or budgets: bounded, but a client could vary models freely


class Throttle:
    def __init__(self, logger: logging.Logger, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval = interval_s
        self._clock = clock
        self._seen: dict[Hashable, tuple[float, int]] = {}

    def warning(self, key: Hashable, message: str, *args: Any) -> bool:
        """Log now or count it; True when logged."""
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._interval:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            message += " repeated=%d in_last_s=%d"
            args = (*args, last[1], round(now - last[0]))
        if len(self._seen) >= _MAX_KEYS and key not in self._seen:
            self._seen.clear()
        self._seen[key] = (now, 0)
        self._log.warning(message, *args)
        return True
