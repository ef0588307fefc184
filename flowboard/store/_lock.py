"""One writing server per store: a second one stops at start-up instead of mixing its trades in.

SQLite: an exclusive ``flock`` on a side file (``<db>.lock``). SQLite's own locks cannot do it:
in WAL mode a writer holds its lock only while it commits, and ``locking_mode=EXCLUSIVE``
would shut out the edges that read the same file. The kernel drops the lock when the process
ends, however it ends, so a crash never leaves a stale lock behind.

PostgreSQL: a session advisory lock, held on a connection of its own for as long as the store
is open, keyed by the schema the store's tables live in (``current_schema()``), so that
separate schemas of one database (as the tests use) are separate stores.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

from flowboard.errors import ConfigError, StoreError

#: First half of the PostgreSQL advisory lock key; the second is a hash of the schema.
WRITER_LOCK_CLASS = 0x466C6F62  # "Flob"

_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))"
_UNLOCK = "SELECT pg_advisory_unlock(%s, hashtext(current_schema()))"

_IN_USE = (
    "--db {db} is in use by another Flowboard server (one ingest per database): stop it, "
    "give this one its own --db, or run it with --role edge to serve from the same data"
)


class SqliteWriterLock:
    """Holds ``<path>.lock`` exclusively from construction until ``release``."""

    def __init__(self, path: Path) -> None:
        self.lock_path = path.with_name(path.name + ".lock")
        try:
            self._fd: int | None = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise ConfigError(
                f"--db {path}: cannot create its lock file {self.lock_path} ({error.strerror})"
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise ConfigError(_IN_USE.format(db=path)) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


class PostgresWriterLock:
    """Holds the advisory lock of the store's schema from construction until ``release``."""

    def __init__(self, conninfo: str, description: str) -> None:
        try:
            self._connection: psycopg.Connection[TupleRow] | None = psycopg.connect(conninfo, autocommit=True)
            row = self._connection.execute(_TRY_LOCK, (WRITER_LOCK_CLASS,)).fetchone()
        except psycopg.Error as error:
            self.release()
            raise StoreError(f"PostgreSQL {description}: taking the writer lock failed: {error}") from error
        if row is None or not row[0]:
            self.release()
            raise ConfigError(_IN_USE.format(db=description))

    def release(self) -> None:
        if self._connection is None:
            return
        try:
            # Unlocked before closing: the server ends a closed session in its own time, and a
            # server restarted at once must find the lock free.
            self._connection.execute(_UNLOCK, (WRITER_LOCK_CLASS,))
        except psycopg.Error:
            pass  # the session is gone already, and its lock with it
        finally:
            self._connection.close()
            self._connection = None
