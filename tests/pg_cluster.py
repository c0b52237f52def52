"""A throwaway PostgreSQL cluster for the tests: Debian's initdb/pg_ctl in a temp dir, removed after.

PostgreSQL refuses to run as root and CI runs as root, so there the cluster belongs to an
unprivileged user (`nobody`, or a system user made for it); otherwise it runs as whoever runs the tests. It listens on a free
loopback port and puts its unix socket in its own directory, so it never meets a system cluster.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

_SEARCH = ("/usr/lib/postgresql/*/bin",)


def find_bin() -> Path | None:
    """The newest Debian PostgreSQL bin directory with initdb, or one on PATH."""
    def version(directory: str) -> int:
        number = Path(directory).parent.name
        return int(number) if number.isdigit() else 0

    for pattern in _SEARCH:
        for directory in sorted(glob.glob(pattern), key=version, reverse=True):
            if (Path(directory) / "initdb").exists():
                return Path(directory)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unprivileged_user() -> pwd.struct_passwd:
    """`nobody`, or a dedicated system user made for the purpose where there is none."""
    for name in ("nobody", "openrouter-spend-pg"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "openrouter-spend-pg"],
                   check=True, capture_output=True, timeout=30)
    return pwd.getpwnam("openrouter-spend-pg")


class Cluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _unprivileged_user() if os.geteuid() == 0 else None
        # Not under pytest's tmp dir: that is 0700 root's, which `nobody` cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="openrouter-spend-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs["user"] = self.user.pw_uid
            kwargs["group"] = self.user.pw_gid
            kwargs["extra_groups"] = []
        return subprocess.run(
            [str(self.bindir / tool), *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
            **kwargs,
        )

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", check=False)

    def require_password(self, role: str) -> None:
        """Make `role` log in with its password (scram) over TCP; everyone else stays trusted."""
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        self._run("pg_ctl", "-D", str(self.data), "reload")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A fresh database for one test; the cluster is shared by the session."""
        name = "t_" + uuid.uuid4().hex[:12]
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                  "-q", "-c", f"CREATE DATABASE {name}")
        return self.url(name)
