"""The `openrouter-spend` entry point: `statusline` is sent on before anything heavy is imported.

Claude Code runs the status line every few hundred milliseconds; importing the full CLI (argparse
for every command, logging, the config loader) would cost more than the command itself.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["statusline"]:
        from proxy.cli import statusline

        return statusline.main(args[1:])
    from proxy.cli.main import main as full

    return full(args)
