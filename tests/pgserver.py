"""A throw-away PostgreSQL server for tests (and bench/workers.py): initdb in a temporary
folder, started on a free local port with fsync off, stopped and deleted afterwards.

Uses the server binaries of the machine (``initdb``/``pg_ctl`` on PATH, else the newest
``/usr/lib/postgresql/*/bin``). PostgreSQL refuses to run as root: as root, the server runs
as the ``postgres`` account when there is one. :func:`start_postgres` returns None with the
reason in :data:`UNAVAILABLE` when no server can be started here (the fixtures skip).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

UNAVAILABLE: list[str] = []  # why start_postgres returned None


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name)
                  if Path(d).parent.name.isdigit() else 0)
    return Path(dirs[-1]) if dirs and (Path(dirs[-1]) / "pg_ctl").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bin_dir: Path, base: Path, user: pwd.struct_passwd | None):
        self.bin_dir, self.base, self.user = bin_dir, base, user
        self.data = base / "data"
        self.port = _free_port()

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        kw = {"user": self.user.pw_uid, "group": self.user.pw_gid} if self.user else {}
        return subprocess.run([str(self.bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True,
                              timeout=timeout, cwd=self.base, **kw)

    def init(self) -> None:
        proc = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "hemascan", "-E", "UTF8",
                         "--no-sync", "--locale=C")
        if proc.returncode:
            raise RuntimeError(f"initdb failed: {proc.stderr.strip()[-500:]}")

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        proc = self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.base / "server.log"),
                         "-w", "-t", "60", "start", timeout=90)
        if proc.returncode:
            log = (self.base / "server.log").read_text(errors="replace")[-800:] if (self.base / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {proc.stderr.strip()[-300:]} {log}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", timeout=60)

    def url(self, database: str = "postgres") -> URL:
        return URL.create("postgresql+psycopg", username="hemascan", host="127.0.0.1", port=self.port,
                          database=database)

    def create_database(self, name: str | None = None) -> URL:
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def drop_database(self, name: str) -> None:
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            engine.dispose()

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


_SERVERS: dict[int, PostgresServer] = {}  # port -> server started by start_postgres


def start_postgres(tmpdir: str | os.PathLike | None = None) -> URL | None:
    """Start a new server and return the URL of its ``postgres`` database (role ``hemascan``,
    no password, local only); None (reason in UNAVAILABLE) where none can be started.
    :func:`stop_postgres` stops it and deletes its files."""
    server = start_server(tmpdir)
    if server is None:
        return None
    _SERVERS[server.port] = server
    return server.url()


def server_of(url: URL) -> PostgresServer:
    return _SERVERS[url.port]


def stop_postgres(url: URL) -> None:
    server = _SERVERS.pop(url.port, None)
    if server is not None:
        server.cleanup()


def start_server(tmpdir: str | os.PathLike | None = None) -> PostgresServer | None:
    """Start a new server; None (reason in UNAVAILABLE) where none can be started.
    ``tmpdir`` is used when the server's account can reach it, else a new folder in /tmp."""
    UNAVAILABLE.clear()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        UNAVAILABLE.append("the PostgreSQL driver psycopg is not installed")
        return None
    bin_dir = _bin_dir()
    if bin_dir is None:
        UNAVAILABLE.append("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql")
        return None
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            UNAVAILABLE.append("running as root and there is no 'postgres' account to run the server as")
            return None
    # the server's account must reach its folder: pytest's tmp of root is 0700
    base = Path(tempfile.mkdtemp(prefix="hemascan-pg-", dir=None if user else tmpdir))
    if user:
        os.chown(base, user.pw_uid, user.pw_gid)
    server = PostgresServer(bin_dir, base, user)
    try:
        server.init()
        server.start()
    except Exception as exc:
        shutil.rmtree(base, ignore_errors=True)
        UNAVAILABLE.append(f"could not start a PostgreSQL server: {exc}")
        return None
    return server


def wait_until_accepting(server: PostgresServer, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc = server._run("pg_isready", "-h", "127.0.0.1", "-p", str(server.port))
        if proc.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("PostgreSQL did not accept connections")
