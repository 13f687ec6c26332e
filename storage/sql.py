"""The few SQL spellings that differ between SQLite and PostgreSQL."""

from __future__ import annotations

import io
import re
from contextlib import contextmanager
from datetime import date
from typing import Iterator

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Table, bindparam, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import TypeEngine


def month_of(dialect: str, column: str) -> str:
    """The first day of the column's calendar month, as a DATE."""
    if dialect == "postgresql":
        return f"CAST(date_trunc('month', {column}) AS DATE)"
    return f"date({column}, 'start of month')"


def null_safe_differs(dialect: str, left: str, right: str, columns: list[str]) -> str:
    """SQL that is true when any column differs between two row aliases, NULLs included."""
    if not columns:
        return "false"
    operator = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    return " OR ".join(f"{left}.{c} {operator} {right}.{c}" for c in columns)


# A `:name` bind in SQL text (not PostgreSQL's `::` cast).
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)\b")


def execute_named(connection: Connection, sql: str, values: dict, type_: TypeEngine | None = None,
                  customer_ids: list[str] | None = None):
    """Run `sql` with those of `values` it names (`:name`) bound, typed `type_`; values it
    does not name are left out. `customer_ids` binds an expanding `:ids`."""
    named = set(_NAMED.findall(sql))
    used = {name: value for name, value in values.items() if name in named}
    binds = [bindparam(name, type_=type_) for name in used]
    if customer_ids is not None:
        used["ids"] = list(customer_ids)
        binds.append(bindparam("ids", expanding=True))
    return connection.execute(text(sql).bindparams(*binds), used)


def bulk_insert(connection: Connection, table: str, frame: pd.DataFrame) -> None:
    """Append a DataFrame's rows to a table fast, inside the connection's transaction:
    COPY on PostgreSQL, executemany on SQLite. Values must already be in the form the
    column stores (dates as ISO text, JSON as text); NaN/None become NULL."""
    if frame.empty:
        return
    columns = list(frame.columns)
    if connection.dialect.name == "postgresql":
        buffer = io.StringIO()
        frame.to_csv(buffer, header=False, index=False, na_rep="")
        quoted = ", ".join(f'"{c}"' for c in columns)
        statement = f"COPY {table} ({quoted}) FROM STDIN WITH (FORMAT csv)"
        with _driver_cursor(connection, statement) as cursor, cursor.copy(statement) as copy:
            copy.write(buffer.getvalue())
        return
    # Column by column to Python objects, missing values as None: a whole-frame
    # astype(object) + where() costs two copies of every cell.
    _sqlite_executemany(connection, table, columns, [_python_values(frame[column]) for column in columns])


def insert_rows(connection: Connection, table: Table, rows: list[dict]) -> None:
    """`connection.execute(table.insert(), rows)`, for thousands of rows at once. On SQLite
    the values go through each column's own bind processing a column at a time and then
    straight to the driver's executemany: SQLAlchemy's per-row parameter handling costs
    some 25 µs a row, a third of a second for a first run's outbox. Every row must name
    the same columns; a column they leave out gets its default."""
    if not rows:
        return
    names = list(rows[0])
    if any(len(row) != len(names) or any(name not in row for name in names) for row in rows):
        raise ValueError(f"insert_rows into {table.name}: every row must name the same columns ({', '.join(names)})")
    if connection.dialect.name != "sqlite":
        connection.execute(table.insert(), rows)
        return
    dialect = connection.dialect
    values, columns = [], []
    for name in names:
        column = table.c[name]
        processor = column.type.dialect_impl(dialect).bind_processor(dialect)
        values.append(_processed([row[name] for row in rows], processor))
        columns.append(column.name)
    for column in table.c:
        default = column.default
        if column.name in names or default is None:
            continue
        if not default.is_scalar:
            raise ValueError(f"insert_rows into {table.name}: rows must name {column.name} (its default is computed)")
        processor = column.type.dialect_impl(dialect).bind_processor(dialect)
        values.append([default.arg if processor is None else processor(default.arg)] * len(rows))
        columns.append(column.name)
    _sqlite_executemany(connection, table.name, columns, values)


def _sqlite_executemany(connection: Connection, table: str, columns: list[str], values: list) -> None:
    """INSERT one row per position of the column-wise `values`, through the driver."""
    quote = connection.dialect.identifier_preparer.quote
    statement = (f"INSERT INTO {quote(table)} ({', '.join(quote(c) for c in columns)}) "
                 f"VALUES ({', '.join('?' for _ in columns)})")
    with _driver_cursor(connection, statement) as cursor:
        cursor.executemany(statement, zip(*values))


@contextmanager
def _driver_cursor(connection: Connection, statement: str) -> Iterator:
    """A cursor of the driver's connection, for bulk writes SQLAlchemy would slow down:
    inside the connection's transaction (begun here if it is not yet, as SQLAlchemy's own
    statements would; the driver alone would write outside it, for good), and its errors
    raised as SQLAlchemy raises them (IntegrityError for a duplicate key, …)."""
    if not connection.in_transaction():
        connection.begin()
    dbapi = connection.dialect.loaded_dbapi
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        yield cursor
    except dbapi.Error as error:
        raise DBAPIError.instance(statement, None, error, dbapi.Error, hide_parameters=True,
                                  dialect=connection.dialect, ismulti=True) from error
    finally:
        cursor.close()


def _processed(values: list, processor) -> list:
    """`values` through a bind processor, each distinct value once: a run's rows share a
    handful of timestamps (created now, held until one release time per person)."""
    if processor is None:
        return values
    done: dict = {}
    result = []
    for value in values:
        if not isinstance(value, _ONCE_PER_VALUE):  # documents, tuples (equal to others of other types inside)
            result.append(processor(value))
            continue
        # Equal is not enough: 1 equals True, and 08:00+08:00 equals 00:00 UTC (SQLite keeps the wall time).
        key = (type(value), value, getattr(value, "tzinfo", None))
        if key not in done:
            done[key] = processor(value)
        result.append(done[key])
    return result


_ONCE_PER_VALUE = (str, int, float, date, type(None))  # datetime is a date


def _python_values(column: pd.Series) -> np.ndarray:
    """A column as an object array, missing values (NaN, NaT, NA) as None."""
    values = column.to_numpy(dtype=object)
    missing = column.isna().to_numpy()
    if missing.any():
        values = values.copy()
        values[missing] = None
    return values


def refresh_statistics(connection: Connection, tables: list[str]) -> None:
    """Give the query planner fresh statistics after bulk writes, so that e.g. a rep's
    list is read through the owner index rather than by scanning a whole score run."""
    if connection.dialect.name == "postgresql":
        for table in tables:
            connection.exec_driver_sql(f"ANALYZE {table}")
        return
    # A sampled ANALYZE: a few hundred rows per index are plenty for the planner.
    connection.exec_driver_sql("PRAGMA analysis_limit=400")
    for table in tables:
        connection.exec_driver_sql(f"ANALYZE {table}")


def _plain_rows(result) -> list:
    """Every row as a tuple. Straight from the driver's cursor when SQLAlchemy would not
    convert any value (no result processors, e.g. text() queries): building a million
    Row objects costs seconds. Otherwise through SQLAlchemy."""
    metadata = getattr(result, "_metadata", None)
    cursor = getattr(result, "cursor", None)
    if (cursor is not None and metadata is not None and getattr(metadata, "_tuplefilter", None) is None
            and not getattr(result, "_row_logging_fn", None)
            and getattr(metadata, "_effective_processors", True) is None):
        try:
            return cursor.fetchall()
        finally:
            result.close()
    return result.all()


# Key columns kept as Python strings: pandas joins and looks up by them again and again,
# and an Arrow-backed str key is turned into Python objects for every one of those.
KEY_COLUMNS = ("customer_id",)


def frame_from_result(result, columns: list[str], numeric: tuple[str, ...] = ()) -> pd.DataFrame:
    """A query result as a DataFrame, column by column: handing pandas a million Row
    objects costs seconds of per-cell inspection. `numeric` columns become float64."""
    rows = _plain_rows(result)
    data = list(zip(*rows)) if rows else [()] * len(columns)
    frame = {}
    for name, values in zip(columns, data):
        frame[name] = np.array(values, dtype=float) if name in numeric else np.array(values, dtype=object)
    return _keys_as_objects(pd.DataFrame(frame, columns=columns))


def _keys_as_objects(frame: pd.DataFrame) -> pd.DataFrame:
    for name in KEY_COLUMNS:
        if name in frame and frame[name].dtype != object:
            frame[name] = frame[name].astype(object)
    return frame


# ---------------------------------------------------------------- columnar reads

# The execution option a consistent read sets to its storage.columnar.ColumnarReader.
COLUMNAR_OPTION = "tierbot_columnar_reader"


def positional_sql(sql: str, values: dict, customer_ids: list[str] | None = None) -> tuple[str, list]:
    """`sql` with the `:name` binds it names from `values` as `?` (SQLite's style) and their
    values in order, dates and times as SQLAlchemy stores them; `:ids` expands to the ids."""
    positional: list = []

    def place(match: re.Match) -> str:
        name = match.group(1)
        if name == "ids" and customer_ids is not None:
            positional.extend(customer_ids)
            return ", ".join("?" for _ in customer_ids) or "NULL"
        if name not in values:
            return match.group(0)
        positional.append(_sqlite_value(values[name]))
        return "?"

    return _NAMED.sub(place, sql), positional


def _sqlite_value(value):
    """A bound value as SQLAlchemy stores it in SQLite (dates and times as its ISO text),
    through SQLAlchemy's own bind processing: the columnar reader compares with that text."""
    from datetime import date, datetime

    from sqlalchemy import Date, DateTime
    from sqlalchemy.dialects import sqlite

    type_ = DateTime() if isinstance(value, datetime) else Date() if isinstance(value, date) else None
    if type_ is None:
        return value
    dialect = sqlite.dialect()
    return type_.dialect_impl(dialect).bind_processor(dialect)(value)


def query_frame(connection: Connection, sql: str, values: dict, columns: list[str], numeric: tuple[str, ...] = (),
                type_: TypeEngine | None = None, customer_ids: list[str] | None = None) -> pd.DataFrame:
    """execute_named, as a frame_from_result frame. Inside a consistent read with a
    ColumnarReader the rows come column by column as Arrow arrays, to the same frame."""
    reader = connection.get_execution_options().get(COLUMNAR_OPTION)
    if reader is None:
        return frame_from_result(execute_named(connection, sql, values, type_, customer_ids), columns, numeric)
    table = reader.execute(*positional_sql(sql, values, customer_ids))
    frame = {}
    for name, column in zip(columns, table.columns):
        frame[name] = _numeric_array(column) if name in numeric else _object_array(column)
    return _keys_as_objects(pd.DataFrame(frame, columns=columns, index=pd.RangeIndex(table.num_rows)))


def _numeric_array(column) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        column = pc.cast(column, pa.float64())  # a sum SQLite typed otherwise (e.g. all text)
    return column.to_numpy(zero_copy_only=False).astype(float, copy=False)


def _object_array(column) -> np.ndarray | pd.Series:
    """What the sqlite3 module's Python objects become in a frame: text as pandas' Arrow
    backed str (handed over as it is, not made into a million Python strings for pandas
    to turn back into Arrow), anything else as objects with None where missing."""
    import pyarrow as pa

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.to_pandas()
    if pa.types.is_null(column.type):
        return column.to_numpy(zero_copy_only=False).astype(object, copy=False)
    if column.null_count:
        return np.array(column.to_pylist() + [None], dtype=object)[:-1]
    return column.to_numpy(zero_copy_only=False).astype(object)
