"""`serve --workers N`: N processes serving one port, and the parent that starts, restarts and stops them.

The parent migrates the database (before this is called), checks the port, then forks the
workers; each binds the port itself with SO_REUSEPORT and the kernel spreads connections over
them. They share the database: one WAL file with a recorder each (busy timeout, a failed batch is
kept and retried) and the shared budget ledger (proxy/store/sqlite_holds.py). SIGTERM or SIGINT to
the parent stops every worker gracefully (each drains its recorder), and its exit status is 0
only if every worker stopped cleanly. A worker that dies is started again; one that keeps dying
at start stops the whole server. A dead worker's budget holds on SQLite are dropped at once (the
parent knows it is dead), not after its lease.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from proxy.errors import CliError
from proxy.server.workers import WorkerSlot

log = logging.getLogger("proxy")

_QUICK_S = 5.0  # a worker that dies sooner than this after starting died "at start"
_QUICK_DEATHS = 3
_PR_SET_PDEATHSIG = 1


def check_port(host: str, port: int) -> None:
    """Fail with one line when the port is taken by anything but our own kind (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CliError(f"port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _child(run: Callable[[WorkerSlot], int], slot: WorkerSlot) -> None:
    # Its own process group: a Ctrl-C in the terminal reaches the parent only, which sends one
    # SIGTERM (a second signal during shutdown would cut the recorder's drain short).
    os.setpgid(0, 0)
    try:
        # And if the parent is killed outright, the workers follow it instead of serving on.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    sys.exit(run(slot))


def supervise(
    workers: int, host: str, port: int, grace_s: float, run: Callable[[WorkerSlot], int],
    on_death: Callable[[int], None] | None = None,
) -> int:
    """`on_death(pid)`: called for a worker that died while serving, before its replacement starts."""
    check_port(host, port)
    context = multiprocessing.get_context("fork")
    procs: dict[int, Any] = {}
    started: dict[int, float] = {}
    quick: dict[int, int] = {}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("event=workers_stopping signal=%s", signal.Signals(signum).name)
        stopping = True
        for proc in procs.values():
            if proc.exitcode is None:
                os.kill(proc.pid, signal.SIGTERM)

    with tempfile.TemporaryDirectory(prefix="openrouter-spend-") as sockets:
        os.chmod(sockets, 0o700)

        def start(index: int, first: bool) -> None:
            slot = WorkerSlot(index, workers, Path(sockets), seed_window_spend=first and index == 0)
            proc = context.Process(target=_child, args=(run, slot), name=f"worker-{index}", daemon=False)
            proc.start()
            procs[index], started[index] = proc, time.monotonic()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for index in range(workers):
            start(index, True)
        log.info("event=workers_started workers=%d pids=%s", workers, ",".join(str(p.pid) for p in procs.values()))
        failed = False
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p in procs.values()], timeout=1.0)
            for index, proc in list(procs.items()):
                if proc.exitcode is None or stopping:
                    continue
                log.error("event=worker_died worker=%d pid=%d exitcode=%s", index, proc.pid, proc.exitcode)
                if on_death is not None:
                    on_death(proc.pid)
                quick[index] = quick.get(index, 0) + 1 if time.monotonic() - started[index] < _QUICK_S else 0
                if quick[index] >= _QUICK_DEATHS:
                    log.critical("event=workers_failing worker=%d message=died %d times at start; stopping", index, quick[index])
                    failed = True
                    stop(signal.SIGTERM, None)
                    break
                start(index, False)
        deadline = time.monotonic() + grace_s + 15
        for proc in procs.values():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.exitcode is None:
                log.error("event=worker_killed pid=%d message=did not stop in time", proc.pid)
                proc.kill()
                proc.join()
        codes = [proc.exitcode for proc in procs.values()]
    log.info("event=workers_stopped exitcodes=%s", ",".join(map(str, codes)))
    return 1 if failed or any(code != 0 for code in codes) else 0
