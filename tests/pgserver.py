"""A real PostgreSQL server for the test suite, started once per test session.

The binaries come from the ``pgserver`` wheel (a dev dependency: PostgreSQL built for
manylinux, installed by ``python3 dev.py test`` like any other package), else from a system
installation (Debian's ``/usr/lib/postgresql/N/bin``, or ``pg_ctl`` on the PATH). The
cluster lives in a fresh temporary folder, listens on 127.0.0.1 on a free port, and asks
for a password over TCP (scram-sha-256), as a lab server does. PostgreSQL refuses to run as
root: under root (CI containers) the server runs as the unprivileged ``nobody`` user.

Durability settings are off (fsync, full-page writes): the tests kill hemascan processes,
never the server or the machine, and CREATE DATABASE is then a few milliseconds.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL

SUPERUSER = "postgres"


def find_binaries() -> tuple[Path | None, str]:
    """The folder holding initdb and pg_ctl, and where it came from (or None and why not)."""
    try:
        import warnings

        with warnings.catch_warnings():  # its import asks platformdirs for a runtime dir it does not use here
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH  # the pgserver wheel's own build

        if (Path(POSTGRES_BIN_PATH) / "pg_ctl").is_file():
            return Path(POSTGRES_BIN_PATH), "the pgserver wheel"
    except Exception:  # not installed, or not for this platform
        pass
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if system:
        return system[-1].parent, f"the system's PostgreSQL {system[-1].parent.parent.name}"
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent, "pg_ctl on the PATH"
    return None, "no PostgreSQL binaries: install the dev extras (pgserver) or Debian's postgresql package"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    bindir: Path
    root: Path
    port: int
    password: str
    run_as: tuple[int, int] | None  # (uid, gid) when started by root
    origin: str
    options: str = ""  # the postgres options it was started with (resume uses them again)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres", username: str = SUPERUSER, password: str | None = None) -> URL:
        return URL.create("postgresql+psycopg", username=username,
                          password=self.password if password is None and username == SUPERUSER else password,
                          host="127.0.0.1", port=self.port, database=database)

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs = {}
        if self.run_as is not None:
            kwargs = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        proc = subprocess.run([str(self.bindir / argv[0]), *argv[1:]], capture_output=True, text=True,
                              timeout=timeout, cwd=self.root, env=env, **kwargs)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def create_database(self, prefix: str = "hemascan") -> URL:
        """A new, empty database on this server; its URL."""
        return new_pg_database(self.url(), prefix)

    def halt(self) -> None:
        """Stop the server but keep its data (a server that went away); ``resume`` restarts it."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop", timeout=60)

    def resume(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-o", self.options, "-l", str(self.root / "server.log"),
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired, OSError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> PgServer:
    """initdb + pg_ctl start; raises RuntimeError saying why when it cannot."""
    bindir, origin = find_binaries()
    if bindir is None:
        raise RuntimeError(origin)
    run_as = None
    root = Path(tempfile.mkdtemp(prefix="hemascan-pg-"))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        run_as = (nobody.pw_uid, nobody.pw_gid)
        os.chmod(root, 0o700)
        os.chown(root, *run_as)
    server = PgServer(bindir, root, _free_port(), secrets.token_urlsafe(12), run_as, origin)
    try:
        pwfile = root / "pw"
        pwfile.write_text(server.password + "\n")
        if run_as:
            os.chown(pwfile, *run_as)
        server._run("initdb", "-D", str(server.datadir), "-U", SUPERUSER, f"--pwfile={pwfile}", "-E", "UTF8",
                    "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        pwfile.unlink()
        server.options = (f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                          "-c full_page_writes=off -c synchronous_commit=off -c max_connections=300 "
                          "-c shared_buffers=32MB")
        server.resume()
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(url: URL, timeout: float = 30) -> None:
    from sqlalchemy import create_engine, text

    deadline = time.monotonic() + timeout
    engine = create_engine(url)
    try:
        while True:
            try:
                with engine.connect() as c:
                    c.execute(text("SELECT 1"))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        engine.dispose()


_pg_counter = iter(range(1, 1 << 30))


def new_pg_database(admin_url: URL, prefix: str = "hemascan_t", template: str | None = None) -> URL:
    """CREATE DATABASE (optionally from a template) on the server of ``admin_url``; its URL."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{os.getpid()}_{next(_pg_counter)}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    finally:
        engine.dispose()
    return admin_url.set(database=name)


def drop_pg_database(admin_url: URL, url: URL) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    finally:
        engine.dispose()
