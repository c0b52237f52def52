"""SseSplitter: response bytes in, whole `data:` payloads out, partial lines kept across chunks.

Only the `data` field matters for usage; comments (`: OPENROUTER PROCESSING`), `event:` and `id:`
lines are skipped here (the client still gets every byte: the splitter only reads a copy).
"""

from __future__ import annotations

# A line (or an event's data lines together) longer than this is not something a usage event
# would be: drop it instead of buffering without bound (a hostile or broken upstream could
# otherwise grow memory).
MAX_LINE_BYTES = 4 * 1024 * 1024


class SseSplitter:
    __slots__ = ("_pieces", "_partial_size", "_data", "_data_size", "_skipping", "_dropping_event")

    def __init__(self) -> None:
        # The unfinished last line, kept as the chunks it came in: joining them only once the
        # line ends keeps a long line fed in small chunks linear rather than quadratic.
        self._pieces: list[bytes] = []
        self._partial_size = 0
        self._data: list[bytes] = []
        self._data_size = 0
        self._skipping = False  # inside an over-long line, discarding until its end
        self._dropping_event = False  # inside an over-long event, discarding until its blank line

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the data payloads of every event completed by this chunk."""
        if (
            # The usual chunk of a stream: one whole event of one `data: ` line, nothing pending.
            # Its payload is what the line-by-line path below would return, at a fraction of the cost.
            chunk.endswith(b"\n\n")
            and chunk.startswith(b"data: ")
            and chunk.count(b"\n") == 2
            and b"\r" not in chunk
            and len(chunk) - 7 <= MAX_LINE_BYTES
            and not (self._pieces or self._data or self._skipping or self._dropping_event)
        ):
            return [chunk[6:-2]]
        events: list[bytes] = []
        start = 0
        end = len(chunk)
        while start < end:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                self._keep(chunk[start:])
                break
            line = chunk[start:newline]
            start = newline + 1
            if self._skipping:
                self._skipping = False
                continue
            if self._pieces:
                self._pieces.append(line)
                line = b"".join(self._pieces)
                self._pieces = []
                self._partial_size = 0
            if line.endswith(b"\r"):
                line = line[:-1]
            self._line(line, events)
        return events

    def finish(self) -> list[bytes]:
        """Flush an event the stream ended without the closing blank line for."""
        events: list[bytes] = []
        if self._pieces and not self._skipping:
            line = b"".join(self._pieces)
            if line.endswith(b"\r"):
                line = line[:-1]
            self._line(line, events)
        self._pieces = []
        self._partial_size = 0
        self._line(b"", events)
        return events

    def _keep(self, rest: bytes) -> None:
        if self._skipping:
            return
        self._partial_size += len(rest)
        if self._partial_size > MAX_LINE_BYTES:
            self._pieces = []
            self._partial_size = 0
            self._skipping = True
        else:
            self._pieces.append(rest)

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data and not self._dropping_event:
                events.append(b"\n".join(self._data))
            self._data = []
            self._data_size = 0
            self._dropping_event = False
            return
        if line.startswith(b"data:") and not self._dropping_event:
            value = line[5:]
            if value.startswith(b" "):
                value = value[1:]
            self._data_size += len(value) + 1
            if self._data_size > MAX_LINE_BYTES:
                self._data = []
                self._dropping_event = True
                return
            self._data.append(value)
