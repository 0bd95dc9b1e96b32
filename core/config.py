"""Where hemascan keeps its data, and its settings: every ``HEMASCAN_*`` environment variable.

:class:`Settings` is the one place the environment is read: once, at start (the CLI's
``main``, the desktop's ``main``), by :func:`load_settings`, which refuses a bad value in one
sentence (exit code 2) before any work starts. The object then travels with :class:`Paths`
(``paths.settings``) and the :class:`~core.storage.Database` (``db.settings``); no other module
reads the environment.

Data directory order: explicit argument (``--data-dir``) > ``HEMASCAN_DATA_DIR`` > the
platform's user data directory (platformdirs). ``--db-url`` > ``HEMASCAN_DB_URL`` point the
database elsewhere (e.g. PostgreSQL) while files stay in the data directory.
"""
from __future__ import annotations

import os
import stat
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional, get_args, get_origin

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from core.errors import HemascanError

APP_NAME = "hemascan"
ENV_PREFIX = "HEMASCAN_"


def system_config_file() -> Path:
    """The system-wide configuration an administrator writes for every user of a workstation
    (e.g. a shared data directory): /etc/hemascan/hemascan.toml, %ProgramData%\\hemascan\\hemascan.toml."""
    if sys.platform == "win32":
        return Path(os.environ.get("ProgramData") or r"C:\ProgramData") / APP_NAME / f"{APP_NAME}.toml"
    return Path("/etc") / APP_NAME / f"{APP_NAME}.toml"


# read by Settings (below the environment, above the defaults); a module attribute so tests can point it elsewhere
SYSTEM_CONFIG: Path = system_config_file()


def _lower(value):
    return value.strip().lower() if isinstance(value, str) else value


# a float setting: nan and inf are refused before any bound is checked (a lease of nan seconds
# crash-looped a worker service)
Number = Annotated[float, Field(allow_inf_nan=False)]


def check_db_url(value: str) -> str:
    """A database URL SQLAlchemy can parse (``postgresql+psycopg://u@[::1`` is not one)."""
    from sqlalchemy.engine import make_url

    try:
        make_url(value)
    except Exception:
        raise ValueError("is not a database URL (e.g. postgresql+psycopg://user@host/database)") from None
    return value


class Settings(BaseSettings):
    """hemascan's settings, from ``HEMASCAN_<FIELD>`` environment variables (README: Settings)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, env_ignore_empty=True,
                                      case_sensitive=False, extra="ignore")

    data_dir: Optional[Path] = Field(
        None, description="data directory (database, models, logs, caches); `--data-dir` wins; "
                          "default: the user data directory (e.g. `~/.local/share/hemascan`)")
    db_url: Optional[str] = Field(
        None, description="SQLAlchemy URL of the database, e.g. `postgresql+psycopg://hemascan@db/hemascan` "
                          "(password in ~/.pgpass); `--db-url` wins; default: SQLite in the data directory")
    busy_timeout_ms: int = Field(
        15000, ge=1, le=3_600_000, description="milliseconds a writer waits for another process's SQLite lock "
                                                "before saying the database is busy (exit 3)")
    setup_lock_timeout_s: Number = Field(
        600.0, gt=0, le=86_400, description="seconds a start waits for another process's first-time setup "
                                            "(a long migration) to finish")
    reconnect_attempts: int = Field(
        6, ge=1, le=100, description="attempts of one batch's write when the database connection was lost")
    reconnect_pause_s: Number = Field(
        0.5, gt=0, le=60, description="first pause between those attempts, in seconds (doubling, at most 8 s)")
    worker_lease_s: Number = Field(
        120.0, gt=0, le=86_400, description="seconds a worker's claim is kept without a heartbeat before another "
                                            "worker takes it over; `worker --lease` wins")
    worker_retry_max_s: Number = Field(
        60.0, gt=0, le=3_600, description="longest wait of a worker between retries while the database fails")
    engine: Annotated[Optional[Literal["auto", "torch", "openvino"]], BeforeValidator(_lower)] = Field(
        None, description="inference engine when `--engine` is not given: auto, torch or openvino "
                          "(default: auto: OpenVINO on a CPU where installed, torch on CUDA)")
    compile: Annotated[Optional[Literal["auto", "on", "off"]], BeforeValidator(_lower)] = Field(
        None, description="torch.compile on a CPU: auto, on or off (default: auto)")
    compile_min_images: int = Field(
        10_000, ge=0, le=10**9, description="images in one classify run from which torch on a CPU compiles the "
                                            "model (auto), when no compiled form is cached")
    compile_min_images_warm: int = Field(
        3_000, ge=0, le=10**9, description="the same, when the compiled form is cached already")
    blast_threshold_pct: Number = Field(
        20.0, gt=0, lt=100, description="blast percentage a case's differential is judged against (it says how "
                                        "many more cells to count to tell); `differential --threshold` wins")
    max_file_mb: Number = Field(
        256.0, gt=0, le=1_048_576, description="largest file read as one image, in MiB (bigger ones are "
                                               "refused from their size, before any read)")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        # an argument > HEMASCAN_* > the system-wide file (the same names, lower case) > the defaults
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=SYSTEM_CONFIG)

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, value: str | None) -> str | None:
        return None if value is None else check_db_url(value)

    @property
    def max_file_bytes(self) -> int:
        return max(1, int(self.max_file_mb * 1024**2))

    @classmethod
    def defaults(cls) -> "Settings":
        """The settings with no environment: what a library caller (a test, a benchmark) gets."""
        return cls.model_construct()

    @classmethod
    def variable(cls, name: str) -> str:
        """The environment variable of field ``name``: ``HEMASCAN_WORKER_LEASE_S``."""
        return ENV_PREFIX + name.upper()

    @classmethod
    def accepts(cls, name: str) -> str:
        """What field ``name`` accepts, from its type and bounds: ``a number > 0 and <= 86400``."""
        import annotated_types as at

        info = cls.model_fields[name]
        kind = repr(info.annotation)
        choices = [a for a in (info.annotation, *get_args(info.annotation)) if get_origin(a) is Literal]
        if choices:
            return ", ".join(get_args(choices[0]))
        bounds = []
        for m in info.metadata:
            for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                if isinstance(m, getattr(at, attr.capitalize())):
                    v = getattr(m, attr)
                    bounds.append(f"{sign} {int(v):,}" if float(v).is_integer() else f"{sign} {v:g}")
        what = "a whole number" if info.annotation is int else "a number" if bounds else \
            "a folder" if "Path" in kind else "a database URL" if name == "db_url" else "text"
        return what + (" " + " and ".join(bounds) if bounds else "")

    @classmethod
    def markdown_table(cls) -> str:
        """The README's table of variables (a test checks that the README shows this)."""
        rows = ["| variable | accepts | default | meaning |", "| --- | --- | --- | --- |"]
        for name, info in cls.model_fields.items():
            default = "-" if info.default is None else f"`{info.default:g}`" if isinstance(info.default, float) \
                else f"`{info.default}`"
            rows.append(f"| `{cls.variable(name)}` | {cls.accepts(name)} | {default} | {info.description} |")
        return "\n".join(rows)


class SettingsError(HemascanError):
    """A ``HEMASCAN_*`` variable with a value hemascan cannot use (exit code 2)."""


def settings_error(exc: ValidationError) -> SettingsError:
    """One sentence for the first bad variable: ``HEMASCAN_WORKER_LEASE_S=nan: must be a finite number``."""
    err = exc.errors()[0]
    name = str(err["loc"][0]) if err.get("loc") else "?"
    reason = str(err.get("msg", "is not valid")).removeprefix("Value error, ").replace("Input should be", "must be")
    reason = reason.split(", unable to parse")[0]
    given = err.get("input")
    shown = f"={given!r}" if isinstance(given, (str, int, float)) else ""
    where = f"the environment variable {Settings.variable(name)}{shown}"
    if name in Settings.model_fields and not any(k.upper() == Settings.variable(name) for k in os.environ):
        where = f"{name}{shown} in the system-wide configuration {SYSTEM_CONFIG}"
    return SettingsError(f"{where} cannot be used: {reason[0].lower()}{reason[1:]}")


# Variables of the test suite and the packaging build, not of the app (never warned about).
NOT_SETTINGS_PREFIXES = ("HEMASCAN_TEST_", "HEMASCAN_PACKAGING_", "HEMASCAN_VARIANT")


def unknown_variables(environ=None) -> list[str]:
    """One warning sentence per ``HEMASCAN_*`` variable that is no setting (a typo such as
    ``HEMASCAN_DATADIR`` was ignored without a word, and the default data directory used)."""
    import difflib

    environ = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    out = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        near = difflib.get_close_matches(upper, sorted(known), n=1)
        out.append(f"{name} is not a hemascan setting and is ignored" + (f" (did you mean {near[0]}?)" if near else ""))
    return out


def unknown_config_keys() -> list[str]:
    """One warning sentence per key of the system-wide configuration that is no setting."""
    try:
        keys = tomllib.loads(SYSTEM_CONFIG.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # absent (the usual case); unreadable or malformed: load_settings said so
    return [f"{key} in {SYSTEM_CONFIG} is not a hemascan setting and is ignored" for key in sorted(keys)
            if key not in Settings.model_fields]


def load_settings() -> Settings:
    """The settings from the environment and the system-wide configuration, read once at
    start; a bad value raises :class:`SettingsError` (one sentence, exit code 2) before any
    work starts."""
    try:
        return Settings()
    except ValidationError as exc:
        raise settings_error(exc) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"the system-wide configuration {SYSTEM_CONFIG} is not valid TOML ({exc})") from None
    except OSError as exc:
        raise SettingsError(f"the system-wide configuration {SYSTEM_CONFIG} cannot be read "
                            f"({exc.strerror or exc})") from None


def share_with_group(data_dir: Path) -> bool:
    """A data directory its group may write was made by an administrator for several users of
    one workstation (``install -d -m 2775 -g hemascan DIR``): from now on this process makes
    its files there writable by that group too (the umask's group bits cleared), so the next
    user can open the database, the locks, the logs and the caches. Returns whether it did."""
    if os.name != "posix":
        return False  # Windows: the folder's inherited ACL decides (the installer sets it)
    try:
        if not data_dir.stat().st_mode & stat.S_IWGRP:
            return False
    except OSError:
        return False
    current = os.umask(0)
    os.umask(current & ~0o060)
    return True


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    # the settings read at start travel with the paths to everything that is given them
    settings: Settings = field(default_factory=Settings.defaults, compare=False, repr=False)

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
        the settings' ``db_url`` (``HEMASCAN_DB_URL``), else SQLite in the data directory. Built
        with ``URL.create``, never by formatting: a folder named ``lab?1`` or ``lab%1`` stays a
        folder name."""
        from sqlalchemy.engine import URL, make_url

        given = override or self.settings.db_url
        if given:
            return given if isinstance(given, URL) else make_url(str(given))
        return URL.create("sqlite", database=str(self.database))

    def ensure(self) -> "Paths":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        share_with_group(self.data_dir)  # before anything is made in it
        for d in (self.models, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        try:  # the log is not essential: setup_logging says so once if it cannot be written
            self.logs.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        return self


def resolve_paths(data_dir: str | os.PathLike | None = None, settings: Settings | None = None) -> Paths:
    """The paths for ``data_dir``, else the settings' ``data_dir``, else the user data directory;
    ``settings`` (default: :meth:`Settings.defaults`, no environment) travel with them."""
    settings = settings if settings is not None else Settings.defaults()
    if data_dir is None or data_dir == "":
        data_dir = settings.data_dir
    if data_dir is None:
        from platformdirs import user_data_dir

        data_dir = user_data_dir(APP_NAME, appauthor=False)
    return Paths(Path(data_dir).expanduser().resolve(), settings)


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


if __name__ == "__main__":  # the README's table of settings
    print(Settings.markdown_table())
