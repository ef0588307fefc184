"""Where the trade store lives and how it behaves, parsed and checked once at start-up."""

from __future__ import annotations

from pathlib import Path

import attrs
import psycopg
from psycopg.conninfo import conninfo_to_dict

from flowboard.errors import ConfigError
from flowboard.options import flag

#: ``--db`` when none is given: a SQLite file in the working directory.
DEFAULT_DB_PATH = "flowboard.db"

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@attrs.frozen(kw_only=True)
class StoreConfig:
    """Where the store is and how it batches, retries and forgets. Every default carries its unit."""

    db: str = flag(DEFAULT_DB_PATH, "--db", "SQLite file path or postgresql:// URL")

    batch_max_trades: int = 1_000
    #: How long the writer gathers trades before committing a batch that is not full.
    batch_interval_s: float = 0.2
    #: Trades held in memory while the database is slow or down; beyond this they are dropped and counted.
    queue_max_trades: int = 500_000
    #: Ids of dropped trades remembered, so that a trade sent again is stored and counted once.
    dropped_ids_kept: int = 100_000
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0
    #: How long one statement waits for a lock someone else holds before the attempt fails and is retried.
    lock_timeout_s: float = 5.0
    #: How long aggregation waits for the store to say whether trades older than the remembered ids
    #: are stored; past it they are stored but not shown (flowboard_trades_unverified_total).
    lookup_timeout_s: float = flag(
        0.5,
        "--store-lookup-timeout",
        "aggregation waits this long for the store about a trade older than the remembered ids",
        float,
        unit=" s",
    )
    connect_timeout_s: float = 10.0
    retention_days: float = flag(7.0, "--retention-days", "trades kept in the store", float, unit=" days")
    retention_interval_s: float = 600.0
    #: Rows per DELETE, small so that retention never holds the write lock for long.
    retention_batch_rows: int = 5_000
    load_chunk_trades: int = 50_000
    #: Trades per query of a CSV export, so that an export of any range holds this many at a time.
    export_chunk_trades: int = 5_000
    #: PostgreSQL connections for reads; the writer has one more of its own.
    postgres_readers: int = 4
    #: On shutdown, how long the writer may keep committing what is still queued.
    shutdown_flush_s: float = 5.0

    #: How often market metadata fetched meanwhile is saved (and a failed save retried).
    meta_save_interval_s: float = 5.0

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(StoreConfig):
            if field.name == "db":
                continue
            value = getattr(self, field.name)
            if not value > 0:
                raise ConfigError(f"store setting {field.name} must be greater than 0, got {value!r}")


@attrs.frozen
class SqliteTarget:
    path: Path


@attrs.frozen
class PostgresTarget:
    conninfo: str
    #: host:port/dbname without credentials, safe to put in messages and logs.
    description: str


def parse_target(url_or_path: str) -> SqliteTarget | PostgresTarget:
    """What ``--db`` names: a ``postgresql://`` URL or a SQLite file path."""
    if url_or_path.startswith(_POSTGRES_SCHEMES):
        return _parse_postgres_url(url_or_path)
    if "://" in url_or_path:
        scheme = url_or_path.split("://", 1)[0]
        raise ConfigError(
            f"--db {scheme}://... is not supported: give a SQLite file path (e.g. {DEFAULT_DB_PATH}) "
            "or a postgresql://user@host:port/dbname URL"
        )
    return _parse_sqlite_path(url_or_path)


def _parse_postgres_url(url: str) -> PostgresTarget:
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise ConfigError(
            f"--db is not a valid PostgreSQL URL ({error}); expected postgresql://user@host:port/dbname"
        ) from None
    # libpq only finds a bad port when it connects; say so at start-up instead.
    port_text = str(params.get("port") or "5432")
    if not all(part.isdigit() for part in port_text.split(",")):
        raise ConfigError(f"--db PostgreSQL URL has port {port_text!r}; expected a number such as 5432")
    host = params.get("host") or "local socket"
    dbname = params.get("dbname") or params.get("user") or "(default database)"
    return PostgresTarget(conninfo=url, description=f"{host}:{port_text}/{dbname}")


def _parse_sqlite_path(raw: str) -> SqliteTarget:
    if not raw.strip():
        raise ConfigError(
            f"--db is empty; give a SQLite file path (e.g. {DEFAULT_DB_PATH}) or a postgresql:// URL"
        )
    if raw == ":memory:" or raw.startswith("file:"):
        raise ConfigError(
            f"--db {raw} is not a plain file path: an in-memory or URI database cannot be shared by "
            "the store's writer and reader connections; give a file path"
        )
    path = Path(raw).expanduser()
    if path.is_dir():
        raise ConfigError(f"--db {raw} is a directory; give a file path such as {path / DEFAULT_DB_PATH}")
    if not path.parent.is_dir():
        raise ConfigError(
            f"--db {raw}: directory {path.parent} does not exist; create it or choose another path"
        )
    return SqliteTarget(path=path)
