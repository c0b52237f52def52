"""Processes the benchmark starts: pinned with taskset, each in its own session, all stopped on exit or Ctrl-C.

Also the /proc readings the benchmark quotes: CPU seconds, peak and current RSS, open fds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cores() -> tuple[str, str]:
    """(core for the server under test, core for load generator + upstream)."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return (str(available[0]), str(available[0]))
    return (str(available[0]), str(available[1]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def status_kib(pid: int, key: str) -> int:
    """A line of /proc/<pid>/status such as VmHWM (peak RSS) or VmRSS, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Procs:
    """Every process started here; stop_all() ends exactly these, by process group id."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: list[str], core: str | None, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        if core is not None:
            argv = ["taskset", "-c", core, *argv]
        log = open(self._log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **(env or {})}, cwd=cwd,
        )
        log.close()
        self._procs[name] = proc
        return proc

    def pid(self, name: str) -> int:
        return self._procs[name].pid

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self._log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, name: str, grace_s: float = 15.0) -> int | None:
        proc = self._procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        return proc.returncode

    def stop_all(self) -> None:
        for name in list(self._procs):
            self.stop(name)

    def check_alive(self, name: str) -> None:
        proc = self._procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")


def wait_ready(port: int, path: str | None = None, timeout_s: float = 30.0) -> None:
    """Until the port accepts connections (and `path` answers 200), within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if path is None:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            else:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                    if resp.status == 200:
                        return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"nothing answered on 127.0.0.1:{port}{path or ''} within {timeout_s:g} s")


def writer_idle(port: int, timeout_s: float = 600.0) -> None:
    """Until the proxy's writer has nothing queued: at start it records the catalog's prices
    (421 statements), which under load kept it busy for seconds and skewed a profile taken then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as resp:
            if json.loads(resp.read())["queue_depth"] == 0:
                return
        time.sleep(0.2)
