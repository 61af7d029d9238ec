"""A PostgreSQL server of the test's own (``initdb`` + ``pg_ctl`` in a temporary directory, on a
free loopback port), for tests that stop and start the database: the shared test server must
never be stopped. As root (CI) the server runs as the ``postgres`` user, which PostgreSQL
requires.

    with own_postgres() as pg:    # skips, loudly, when the server binaries are not installed
        url = pg.url              # postgresql+psycopg://mllm@127.0.0.1:PORT/monitor
        pg.stop(); pg.start()
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from sqlalchemy import create_engine

DATABASE = "monitor"
USER = "mllm"


def postgres_bindir() -> Path | None:
    """The newest installed server's bin directory (Debian's layout), or pg_ctl's on PATH."""
    found = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")]
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        found.append(Path(on_path).parent)
    for bindir in found:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OwnPostgres:
    def __init__(self, bindir: Path, root: Path, port: int, as_user: str | None) -> None:
        self.bindir = bindir
        self.data = root / "data"
        self.port = port
        self._as_user = as_user
        self.url = f"postgresql+psycopg://{USER}@127.0.0.1:{port}/{DATABASE}"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_user is not None:
            command = ["runuser", "-u", self._as_user, "--", *command]
        done = subprocess.run(
            command, cwd=self.data.parent, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            log = self.data / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise AssertionError(f"{' '.join(args[:2])} failed:\n{done.stderr}\n{tail}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8")
        self.start()
        admin = create_engine(
            f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/postgres",
            isolation_level="AUTOCOMMIT",
        )
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{DATABASE}"')
        finally:
            admin.dispose()

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} "
            "-c fsync=off -c max_connections=40"
        )
        self._run(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(self.data / "server.log"),
            "-w", "-t", "60", "-o", options,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    bindir = postgres_bindir()
    if bindir is None:
        message = (
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed: the database outage "
            "test cannot run (apt-get install postgresql)"
        )
        warnings.warn(message, stacklevel=2)
        pytest.skip(message)  # under CI=true any skip fails the run (tests/conftest.py)
    as_user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, and there is no postgres user to run PostgreSQL as")
        as_user = "postgres"
    root = Path(tempfile.mkdtemp(prefix="mllm-own-pg-"))
    if as_user is not None:
        shutil.chown(root, user=as_user)
    server = OwnPostgres(bindir, root, free_port(), as_user)
    try:
        server.init()
        yield server
    finally:
        if server.running():
            with suppress(AssertionError):  # already stopped; the directory goes anyway
                server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
