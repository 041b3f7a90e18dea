"""One holder at a time across processes and machines, for a database that several writers share.

SQLite: a file lock beside the database file (every writer is on one machine).
PostgreSQL: a session advisory lock in the database itself, which also holds
across machines. Other URLs: no lock (the caller's operation must tolerate races).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse


def sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI, or None for any other kind of store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def holds_a_lock(uri: str) -> bool:
    """Whether :func:`database_lock` excludes other processes for a database at ``uri``."""
    return sqlite_file(uri) is not None or _is_postgresql(uri)


def _is_postgresql(uri: str) -> bool:
    return urlparse(uri).scheme.startswith("postgresql")


@contextlib.contextmanager
def database_lock(uri: str, key: int, timeout: float = 300) -> Iterator[None]:
    """Hold the lock ``key`` of the database at ``uri`` (SQLAlchemy URL) for the block."""
    database = sqlite_file(uri)
    if database is not None:
        from filelock import FileLock

        database.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(database.with_name(f".{database.name}.{key & 0xFFFFFFFF:08x}.lock"), timeout=timeout):
            yield
    elif _is_postgresql(uri):
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        finally:
            engine.dispose()
    else:
        yield
