"""Where hemascan keeps its data: database, model registry, logs, caches.

Order: explicit argument (``--data-dir``) > ``HEMASCAN_DATA_DIR`` > the platform's user
data directory (platformdirs). ``HEMASCAN_DB_URL`` / ``--db-url`` point the database
elsewhere (e.g. PostgreSQL) while files stay in the data directory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "hemascan"


@dataclass(frozen=True)
class Paths:
    data_dir: Path

    @property
    def database(self) -> Path:
        return self.data_dir / "hemascan.sqlite3"

    @property
    def models(self) -> Path:
        return self.data_dir / "models"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def cache(self) -> Path:
        return self.data_dir / "cache"

    @property
    def samples(self) -> Path:
        return self.data_dir / "samples"

    def db_url(self, override=None):
        """The database URL (a :class:`sqlalchemy.engine.URL`): ``override`` (``--db-url``), else
        ``HEMASCAN_DB_URL``, else SQLite in the data directory. Built with ``URL.create``, never
        by formatting: a folder named ``lab?1`` or ``lab%1`` stays a folder name."""
        from sqlalchemy.engine import URL, make_url

        given = override or os.environ.get("HEMASCAN_DB_URL")
        if given:
            return given if isinstance(given, URL) else make_url(str(given))
        return URL.create("sqlite", database=str(self.database))

    def ensure(self) -> "Paths":
        for d in (self.data_dir, self.models, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        try:  # the log is not essential: setup_logging says so once if it cannot be written
            self.logs.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        return self


def resolve_paths(data_dir: str | os.PathLike | None = None) -> Paths:
    if data_dir is None:
        data_dir = os.environ.get("HEMASCAN_DATA_DIR") or None
    if data_dir is None:
        from platformdirs import user_data_dir

        data_dir = user_data_dir(APP_NAME, appauthor=False)
    return Paths(Path(data_dir).expanduser().resolve())


def resources_dir() -> Path:
    """The bundled resources (models, migrations, icons), from source or a frozen build."""
    from importlib.resources import files

    return Path(str(files("resources")))


def default_reviewer() -> str:
    """The operating-system user: the reviewer (and who activated a model) when none is named."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
