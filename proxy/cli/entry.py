"""The `openrouter-spend` entry point: `statusline` is sent on before anything heavy is imported.

Claude Code runs the status line every few hundred milliseconds; importing the full CLI (argparse
for every command, logging, the config loader) would cost more than the command itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

_SIGPIPE_STATUS = 128 + 13  # what a shell reports for a writer killed by SIGPIPE, as `yes | head` is


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["statusline"]:
            from proxy.cli import statusline

            return statusline.main(args[1:])
        from proxy.cli.main import main as full

        return full(args)
    except BrokenPipeError:
        # `openrouter-spend models | head`: the reader left. End quietly; point stdout at /dev/null
        # so the interpreter's final flush does not raise the same error again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return _SIGPIPE_STATUS
