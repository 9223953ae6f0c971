"""A real PostgreSQL server for tests, from the Debian package's binaries (``initdb``, ``pg_ctl`` on PATH or in
``/usr/lib/postgresql/<version>/bin``). Shared by the unit tests (``tests/test_capture_postgres.py``) and, later,
the e2e harness: ``from tests.postgres import PostgresServer, postgres_server``.

The server listens on 127.0.0.1 on a free port, with no Unix socket, ``trust`` authentication and a superuser
``slm``; its data folder is a new temporary folder. PostgreSQL refuses to run as root: when the tests run as
root, the server runs as the unprivileged ``postgres`` user (or ``nobody``) through ``setpriv`` and owns its
folder. Without the binaries the fixture skips with the reason, unless ``SLM_REQUIRE_POSTGRES=1`` (CI), where it
fails. ``stop()``/``start()`` take the server down and up again on the same port and data (outage tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

SUPERUSER = "slm"


def find_binaries() -> tuple[str, str] | None:
    """(initdb, pg_ctl), from PATH or the newest /usr/lib/postgresql/*/bin; None when absent."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(f"{folder}/initdb", os.X_OK) and os.access(f"{folder}/pg_ctl", os.X_OK):
            return f"{folder}/initdb", f"{folder}/pg_ctl"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(
        "running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL"
    )


class PostgresServer:
    def __init__(self, binaries: tuple[str, str]) -> None:
        self.initdb, self.pg_ctl = binaries
        # as root the server's user must reach the folder: /tmp, not a TMPDIR inside root's own folders
        parent = "/tmp" if os.geteuid() == 0 and os.path.isdir("/tmp") else None
        self.folder = Path(tempfile.mkdtemp(prefix="slm-pg-", dir=parent))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = _free_port()
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            user = _unprivileged_user()
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self._prefix = [
                "setpriv",
                f"--reuid={user.pw_uid}",
                f"--regid={user.pw_gid}",
                "--clear-groups",
                "--",
            ]
        self.running = False

    def _run(self, *args: str, timeout: float = 120) -> None:
        env = {**os.environ, "LC_ALL": "C", "HOME": str(self.folder)}
        r = subprocess.run([*self._prefix, *args], capture_output=True, text=True, env=env, timeout=timeout)
        if r.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}\n{log[-3000:]}"
            )

    def init(self) -> None:
        self._run(
            self.initdb, "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C",
            "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )
        self.running = True

    def stop(self) -> None:
        """Fast shutdown: sessions are disconnected, new connections refused until ``start``."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        self.running = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL. Call it outside a running event loop."""

        async def create() -> None:
            conn = await asyncpg.connect(self.url())
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return self.url(name)

    def close(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started server, removed afterwards; skips (or fails under SLM_REQUIRE_POSTGRES=1) without binaries."""
    binaries = find_binaries()
    if binaries is None:
        reason = "PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin"
        if os.environ.get("SLM_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}, and SLM_REQUIRE_POSTGRES=1")
        pytest.skip(f"{reason}: install the postgresql package (set SLM_REQUIRE_POSTGRES=1 to fail instead)")
    server = PostgresServer(binaries)
    try:
        server.init()
        for attempt in range(3):  # the free port may be taken between choosing and binding it
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = _free_port()
        yield server
    finally:
        server.close()
