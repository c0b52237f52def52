"""SseSplitter: response bytes in, whole `data:` payloads out, partial lines kept across chunks.

Only the `data` field matters for usage; comments (`: OPENROUTER PROCESSING`), `event:` and `id:`
lines are skipped here (the client still gets every byte: the splitter only reads a copy).
"""

from __future__ import annotations

# A line longer than this is not something a usage event would be: drop it instead of
# buffering without bound (a hostile or broken upstream could otherwise grow memory).
MAX_LINE_BYTES = 4 * 1024 * 1024


class SseSplitter:
    __slots__ = ("_partial", "_data", "_skipping")

    def __init__(self) -> None:
        self._partial = b""
        self._data: list[bytes] = []
        self._skipping = False  # inside an over-long line, discarding until its end

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the data payloads of every event completed by this chunk."""
        if self._partial:
            chunk = self._partial + chunk
            self._partial = b""
        events: list[bytes] = []
        start = 0
        end = len(chunk)
        while start < end:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                rest = chunk[start:]
                if self._skipping or len(rest) > MAX_LINE_BYTES:
                    self._skipping = True
                else:
                    self._partial = rest
                break
            line = chunk[start:newline]
            start = newline + 1
            if self._skipping:
                self._skipping = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            self._line(line, events)
        return events

    def finish(self) -> list[bytes]:
        """Flush an event the stream ended without the closing blank line for."""
        events: list[bytes] = []
        if self._partial and not self._skipping:
            line = self._partial.rstrip(b"\r")
            self._partial = b""
            self._line(line, events)
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data = []
            return
        if line.startswith(b"data:"):
            value = line[5:]
            if value.startswith(b" "):
                value = value[1:]
            self._data.append(value)
