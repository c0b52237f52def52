"""What reading the model from a request body costs: the no-parse shortcut vs the full parse.

Run: PYTHONPATH=$PWD python3 bench/body_model.py
Bodies are shaped like Claude Code's (text and tool_result blocks), at 75 B, ~1 MB and ~12 MB,
with `model` first (the shortcut) or in the middle (a parse).
"""

from __future__ import annotations

import json
import time

from proxy.server.body import body_model
from proxy.server.routing import requested_model


def _body(turns: int, model_first: bool) -> bytes:
    messages = []
    for i in range(turns):
        messages.append({"role": "user", "content": [{"type": "text", "text": "x" * 2000},
                         {"type": "tool_result", "tool_use_id": f"t{i}", "content": [{"type": "text", "text": "y" * 500}]}]})
        messages.append({"role": "assistant", "content": [{"type": "tool_use", "id": f"t{i}", "name": "Read", "input": {"path": "/a"}}]})
    model = "anthropic/claude-sonnet-4.5"
    data = {"model": model, "messages": messages, "stream": True} if model_first else {"messages": messages, "model": model, "stream": True}
    return json.dumps(data).encode()


def _ms(fn: object, body: bytes, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        fn(body)  # type: ignore[operator]
    return (time.perf_counter() - start) / rounds * 1000


def main() -> None:
    for turns, label in ((0, "tiny"), (400, "~1 MB"), (4400, "~12 MB")):
        for first in (True, False):
            body = _body(turns, first)
            rounds = 2000 if turns == 0 else (30 if turns < 1000 else 4)
            parsed = _ms(lambda b: body_model(b, None, 64 << 20), body, rounds)
            scanned = _ms(requested_model, body, rounds)
            where = "first" if first else "middle"
            print(f"{label:7s} model {where:6s} {len(body):>9d} B  body_model {parsed:8.3f} ms  byte scan {scanned:8.3f} ms")


if __name__ == "__main__":
    main()
