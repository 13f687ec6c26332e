"""Engines and schema upgrades.

One plain URL configures both engines (DESIGN §4): the CLI uses the synchronous engine,
the service the async one; each picks its driver from the URL's backend.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import date, datetime, timezone, tzinfo
from pathlib import Path
from typing import Any, Iterator

import orjson
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_SYNC_DRIVERS = {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+psycopg"}
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg_async"}


def _with_driver(url: str, drivers: dict[str, str]) -> URL:
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    backend = parsed.get_backend_name()
    if backend not in drivers:
        raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")
    return parsed.set(drivername=drivers[backend])


def is_sqlite(url: str | URL) -> bool:
    return make_url(str(url) if isinstance(url, URL) else url).get_backend_name() == "sqlite"


def _ensure_sqlite_folder(url: URL) -> None:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


# How long a SQLite connection waits for another's lock before "database is locked".
BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the service read while an import writes; foreign keys are off by default.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # Import staging tables are temporary tables: they must spill to disk, not to RAM.
    cursor.execute("PRAGMA temp_store=FILE")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def as_utc(moment: datetime | None) -> datetime | None:
    """A timezone-aware column's value as an aware datetime: SQLite hands it back naive, in UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def local_time(moment: datetime | str | None, tz: tzinfo) -> datetime | None:
    """A stored moment (a datetime, or the text a raw SQLite query gives) in time zone `tz`."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        moment = datetime.fromisoformat(str(moment))
    return as_utc(moment).astimezone(tz)


def as_date(value: Any) -> date | None:
    """A date column's value as a date: SQLite and raw queries may hand back its text."""
    if value is None or isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, datetime):
        return value.date()
    return date.fromisoformat(str(value)[:10])


def json_text(value) -> str:
    """JSON columns' text, through orjson: a first run writes the JSON of 100k outbox rows
    and tasks, half a second with the json module. Non-ASCII text is written as it is."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


def json_value(text: str | bytes):
    """A JSON column's value: orjson, or the json module for text orjson refuses (rows the
    json module wrote before may hold NaN)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _with_json(kwargs: dict) -> dict:
    kwargs.setdefault("json_serializer", json_text)
    kwargs.setdefault("json_deserializer", json_value)
    return kwargs


def make_engine(url: str, **kwargs) -> Engine:
    kwargs = _with_json(kwargs)
    sync_url = _with_driver(url, _SYNC_DRIVERS)
    if sync_url.get_backend_name() == "sqlite":
        _ensure_sqlite_folder(sync_url)
        engine = create_engine(sync_url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling would commit before DDL; we BEGIN ourselves.
        event.listen(engine, "connect", _disable_pysqlite_autobegin)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(sync_url, **kwargs)


def make_async_engine(url: str, **kwargs) -> AsyncEngine:
    kwargs = _with_json(kwargs)
    async_url = _with_driver(url, _ASYNC_DRIVERS)
    if async_url.get_backend_name() == "sqlite":
        _ensure_sqlite_folder(async_url)
        # SQLite has one writer at a time; several pooled connections in one process only
        # make them wait on each other in SQLite's busy handler (sleeps of up to 100 ms).
        # One connection queues them in Python instead, which is far cheaper.
        kwargs.setdefault("pool_size", 1)
        kwargs.setdefault("max_overflow", 0)
        kwargs.setdefault("pool_timeout", 30)
        engine = create_async_engine(async_url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(async_url, **kwargs)


def _disable_pysqlite_autobegin(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection) -> None:
    mode = connection.get_execution_options().get("sqlite_begin", "")
    connection.exec_driver_sql(f"BEGIN {mode}".strip())


def for_writing(connection):
    """Mark a connection whose next transaction reads, then writes. On SQLite it starts
    with BEGIN IMMEDIATE (the write lock up front): a deferred transaction that read
    before another process committed fails at its first write with "database is locked"
    (SQLITE_BUSY_SNAPSHOT) at once, instead of waiting its turn."""
    return connection.execution_options(sqlite_begin="IMMEDIATE")


@contextmanager
def write_transaction(engine: Engine, busy_timeout_ms: int | None = None) -> Iterator[Connection]:
    """engine.begin() for transactions that read and then write (see for_writing).
    `busy_timeout_ms`: on SQLite, wait this long for the write lock instead of BUSY_TIMEOUT_MS."""
    with engine.connect() as connection:
        for_writing(connection)
        waiting = busy_timeout_ms is not None and connection.dialect.name == "sqlite"
        if waiting:
            # On the driver's connection: through SQLAlchemy it would begin the transaction first.
            connection.connection.dbapi_connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        try:
            with connection.begin():
                yield connection
        finally:
            if waiting:
                connection.connection.dbapi_connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def alembic_config(url: str):
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic reads options through configparser, which treats % as interpolation.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_schema(url: str) -> None:
    """Bring the database to the newest schema, in place (alembic upgrade head). A database
    already at the newest revision costs one query, not a migration environment."""
    from alembic import command
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = alembic_config(url)
    head = ScriptDirectory.from_config(config).get_current_head()
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    if current != head:
        command.upgrade(config, "head")
