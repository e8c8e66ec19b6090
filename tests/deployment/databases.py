"""The two real databases the deployment tests resume runs from: SQLite and PostgreSQL.

A database is named by one string, so that a test can hand it to a worker process on its
command line: a file path (SQLite, ``SqliteSaver``) or a ``postgresql://`` URL
(``PostgresSaver`` from ``langgraph-checkpoint-postgres``, on the throwaway cluster that
``tests/deployment/conftest.py`` starts). Both are the real checkpointers, not doubles.

:class:`PostgresCluster` runs a PostgreSQL server from Debian's packages
(``scripts/install_postgres.sh``) in a temporary directory: ``initdb`` with trust
authentication for one local user, a server that listens only on a unix socket in that
directory (no TCP port, so nothing to race for and nothing reachable from outside), run as
the unprivileged ``rlm-postgres`` user when the tests run as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple

POSTGRES_PREFIX = "postgresql://"
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"
"""Where Debian's postgresql-NN packages put initdb, pg_ctl and postgres."""
INSTALL_HINT = "install it with 'bash scripts/install_postgres.sh' (Debian's postgresql)"
SERVER_USER = "rlm-postgres"
"""The unprivileged system user the server runs as under root (made by the install script)."""
FALLBACK_SERVER_USER = "nobody"
DB_USER = "rlm"
PORT = 5432
"""Only names the unix socket file (``.s.PGSQL.5432``); no TCP port is opened."""
START_TIMEOUT_SECONDS = 60
"""``pg_ctl start -w`` waits for the server to accept connections at most this long."""
COMMAND_TIMEOUT_SECONDS = 120
SOCKET_DIR_MAX_CHARS = 80
"""Unix socket paths are limited to ~107 bytes: keep the cluster directory short."""
SERVER_SETTINGS = (
    "-c listen_addresses='' -c fsync=off -c synchronous_commit=off "
    "-c full_page_writes=off -c max_connections=50"
)
"""Loopback-only (unix socket) and no durability work: a throwaway test cluster."""


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/NN/bin`` holding initdb and postgres, if any."""
    candidates = [
        Path(d)
        for d in glob.glob(POSTGRES_BIN_GLOB)
        if (Path(d) / "initdb").exists() and (Path(d) / "postgres").exists()
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


def is_postgres(db: str) -> bool:
    return db.startswith(POSTGRES_PREFIX)


@contextlib.contextmanager
def open_checkpointer(db: str) -> Iterator[BaseCheckpointSaver[Any]]:
    """The real checkpointer for ``db`` (a SQLite path or a ``postgresql://`` URL), set up."""
    if is_postgres(db):
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(db) as saver:
            saver.setup()
            yield saver
        return
    from langgraph.checkpoint.sqlite import SqliteSaver

    connection = sqlite3.connect(db, check_same_thread=False)
    try:
        yield SqliteSaver(connection)
    finally:
        connection.close()


def latest_checkpoint(db: str, thread_id: str) -> CheckpointTuple | None:
    """The thread's latest checkpoint, read by this process (call it once writers are gone)."""
    if not is_postgres(db) and not Path(db).exists():
        return None
    with open_checkpointer(db) as saver:
        return saver.get_tuple({"configurable": {"thread_id": thread_id}})


def recorded_iterations(db: str, thread_id: str) -> list[int]:
    """Iterations of the executed cells the thread's latest checkpoint holds."""
    found = latest_checkpoint(db, thread_id)
    if found is None:
        return []
    return [
        step["iteration"] for step in found.checkpoint["channel_values"].get("repl_history", [])
    ]


class PostgresCluster:
    """A throwaway PostgreSQL cluster in a temporary directory (see the module docstring)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        base = tempfile.gettempdir()
        if len(base) > SOCKET_DIR_MAX_CHARS:
            base = "/tmp"
        self.root = Path(tempfile.mkdtemp(prefix="rlm-pg-", dir=base))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._user = _server_user()
        self._started = False

    def start(self) -> PostgresCluster:
        """initdb, then start the server and wait until it accepts connections."""
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", DB_USER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        options = f"{SERVER_SETTINGS} -k {self.root} -p {PORT}"
        self._run(
            "pg_ctl", "start", "-w", "-t", str(START_TIMEOUT_SECONDS), "-D", str(self.data),
            "-l", str(self.log), "-o", options,
        )  # fmt: skip
        self._started = True
        return self

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for ``database`` over the cluster's unix socket."""
        return f"{POSTGRES_PREFIX}{DB_USER}@/{database}?host={self.root}&port={PORT}"

    def create_database(self, prefix: str = "rlm") -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (immediately) and remove the directory; safe to call twice."""
        try:
            # also after a failed start: pg_ctl may have left a server starting up
            if self._started or (self.data / "postmaster.pid").exists():
                self._started = False
                self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def server_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            cwd=self.root,
            check=False,
            **kwargs,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n"
                f"{result.stderr}\n{self.server_log()[-4000:]}"
            )


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: ourselves, or an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return None
    for name in (SERVER_USER, FALLBACK_SERVER_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(
        f"PostgreSQL refuses to run as root and no {SERVER_USER!r} user exists: {INSTALL_HINT}"
    )
