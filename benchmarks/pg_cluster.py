"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb in a temporary folder, `postgres` on a free
loopback port.

PostgreSQL refuses to run as root, and CI runs as root: then the folder belongs to the `postgres` system user
and initdb and the server run as that user (Popen's `user=`, so the handle is the postmaster itself). Logins
over TCP need a password (scram-sha-256), so a wrong password is refused as it would be in production.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

PASSWORD = "fedrecon-test"
USER = "postgres"


def find_bin_dir() -> Path | None:
    """The folder of initdb and postgres: on PATH, else Debian's newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """`start()`, `create_database()` -> a URL, `stop()`; the data folder is removed at stop."""

    def __init__(self, bin_dir: Path, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.durable = durable  # False (tests): fsync off, for speed; True: PostgreSQL's defaults (benchmarks)
        self.as_user = USER if os.geteuid() == 0 else None  # root: run as the postgres system user
        # that user must reach the folder: under /tmp, not a $TMPDIR inside root's home
        self.root = Path(tempfile.mkdtemp(prefix="fedrecon-pg-", dir="/tmp" if self.as_user else None))
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    def _run_as(self) -> dict:
        if self.as_user is None:
            return {}
        entry = pwd.getpwnam(self.as_user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "cwd": self.root}

    def start(self, timeout: float = 60.0) -> PgCluster:
        """initdb, then start the server and wait until it accepts logins."""
        if self.as_user is not None:
            entry = pwd.getpwnam(self.as_user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        (self.root / "pw").write_text(PASSWORD)
        if self.as_user is not None:
            os.chown(self.root / "pw", pwd.getpwnam(self.as_user).pw_uid, -1)
        subprocess.run([str(self.bin_dir / "initdb"), "-D", str(self.root / "data"), "-U", USER, "-E", "UTF8",
                        "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
                        f"--pwfile={self.root / 'pw'}", "--no-sync"],
                       check=True, capture_output=True, **self._run_as())
        self.log = open(self.root / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self._spawn(timeout)
        return self

    def restart_immediate(self, timeout: float = 60.0) -> None:
        """Crash-stop the server as `pg_ctl stop -m immediate` does (SIGQUIT to the postmaster: no shutdown
        checkpoint, recovery at the next start) and start it again on the same folder and port."""
        assert self.process is not None
        self.process.send_signal(signal.SIGQUIT)
        self.process.wait(timeout)
        self._spawn(timeout)

    def _spawn(self, timeout: float) -> None:
        """Start the postmaster and wait until it accepts logins."""
        self.process = subprocess.Popen(
            [str(self.bin_dir / "postgres"), "-D", str(self.root / "data"), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
             "-c", "max_connections=200", *([] if self.durable else ["-c", "fsync=off", "-c", "full_page_writes=off"])],
            stdout=self.log, stderr=subprocess.STDOUT, **self._run_as())
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start: {self.log_tail()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def url(self, database: str, password: str = PASSWORD) -> str:
        """A libpq URL of a database over TCP on loopback."""
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log."""
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT) by the handle, SIGKILL if it hangs; then remove the folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if hasattr(self, "log"):
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
