"""A full run on SQLite reads its bulk rows through a helper process as Arrow columns
(storage.columnar): the frames must be exactly those read row by row, from one snapshot,
and a helper that cannot start must not stop the run."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import text

from bot.rescore import full_rescore
from scoring.features import window_starts
from scoring.generator import generate_company
from scoring.pipeline import ScoringParams
from storage import columnar
from storage import scores as store
from storage import windows
from storage.db import make_engine, upgrade_schema
from storage.importer import run_import
from storage.sql import COLUMNAR_OPTION

AS_OF = date(2026, 11, 20)


@pytest.fixture
def sqlite_company(tmp_path: Path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'tierbot.db'}"
    upgrade_schema(url)
    engine = make_engine(url)
    folder = tmp_path / "co"
    generate_company(folder, customers=300, seed=5, as_of=AS_OF, orders_per_customer=15, activities_per_customer=30)
    run_import(engine, [folder])
    monkeypatch.setattr(store, "COLUMNAR_FROM", 1)
    yield engine
    engine.dispose()


def _everything(connection, month_kept: bool) -> dict[str, pd.DataFrame]:
    month = window_starts(AS_OF)["m0"]
    rules = ScoringParams().intent.rules
    frames = {"customers": store.load_customers(connection),
              "month": windows.read_month(connection, month),
              "aggregates": store.load_aggregates(connection, AS_OF),
              "activity": store.load_activity(connection, AS_OF),
              "intent": store.load_intent_counts(connection, AS_OF, rules)}
    assert windows.is_kept(connection, month) is month_kept
    return frames


@pytest.mark.parametrize("month_kept", [False, True])
def test_columnar_reads_give_the_frames_row_by_row_reads_give(sqlite_company, month_kept):
    if month_kept:
        windows.ensure_month(sqlite_company, window_starts(AS_OF)["m0"])
    with store.consistent_read(sqlite_company) as connection:
        assert connection.get_execution_options().get(COLUMNAR_OPTION) is None
        by_rows = _everything(connection, month_kept)
    with store.consistent_read(sqlite_company, columnar=True) as connection:
        assert connection.get_execution_options().get(COLUMNAR_OPTION) is not None
        by_columns = _everything(connection, month_kept)
    for name, frame in by_rows.items():
        assert len(frame) > 0, name
        pd.testing.assert_frame_equal(by_columns[name], frame, obj=name)


def test_the_run_inputs_read_side_by_side_are_those_read_one_after_another(sqlite_company):
    rules = ScoringParams().intent.rules
    with store.consistent_read(sqlite_company) as connection:
        assert store.parallel_reads(connection) == 1
        one_by_one = store.load_inputs(connection, AS_OF, rules)
    with store.consistent_read(sqlite_company, columnar=True) as connection:
        assert store.parallel_reads(connection) == store.COLUMNAR_HELPERS > 1
        side_by_side = store.load_inputs(connection, AS_OF, rules)
    for name in ("customers", "aggregates", "activity", "intent_counts"):
        frame = getattr(one_by_one, name)
        assert len(frame) > 0, name
        pd.testing.assert_frame_equal(getattr(side_by_side, name), frame, obj=name)


def test_a_columnar_read_sees_one_snapshot(sqlite_company):
    """Every helper's: each read below goes to the next helper in turn."""
    with store.consistent_read(sqlite_company, columnar=True) as connection:
        before = len(store.load_customers(connection))
        with sqlite_company.begin() as writer:
            writer.execute(text("INSERT INTO customers (customer_id, name, updated_at) "
                                "VALUES ('LATE', 'arrived mid-run', '2026-11-20')"))
        for _ in range(store.COLUMNAR_HELPERS):
            assert len(store.load_customers(connection)) == before
    with store.consistent_read(sqlite_company, columnar=True) as connection:
        assert len(store.load_customers(connection)) == before + 1


def test_the_helpers_take_their_snapshots_while_writers_wait(sqlite_company, monkeypatch):
    """Several helpers see one snapshot only if no commit lands between their first reads."""
    import sqlite3

    refused = []
    begin_snapshot = columnar.ColumnarReader.begin_snapshot

    def begin_with_a_writer_knocking(reader):
        writer = sqlite3.connect(sqlite_company.url.database, timeout=0)
        try:
            writer.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            refused.append(str(error))
        finally:
            writer.close()
        begin_snapshot(reader)

    monkeypatch.setattr(columnar.ColumnarReader, "begin_snapshot", begin_with_a_writer_knocking)
    with store.consistent_read(sqlite_company, columnar=True) as connection:
        assert store.parallel_reads(connection) > 1
    assert refused == ["database is locked"]


def test_a_write_lock_held_too_long_leaves_one_helper_reading(sqlite_company, monkeypatch, caplog):
    """A long import keeps the write lock: the run waits LOCK_WAIT_MS for it, then reads
    with one helper (its own first read is its snapshot) rather than racing the import."""
    import sqlite3

    monkeypatch.setattr(store, "LOCK_WAIT_MS", 50)
    importer = sqlite3.connect(sqlite_company.url.database, isolation_level=None)
    importer.execute("BEGIN IMMEDIATE")
    try:
        with store.consistent_read(sqlite_company, columnar=True) as connection:
            assert store.parallel_reads(connection) == 1
            assert connection.get_execution_options().get(COLUMNAR_OPTION) is not None
            assert len(store.load_inputs(connection, AS_OF, []).customers) == 300
    finally:
        importer.execute("ROLLBACK")
        importer.close()
    assert "could not begin (database is locked): trying one" in caplog.text
    # Both pooled connections (the run's and the one that waited for the lock) wait as long
    # as ever again afterwards.
    with sqlite_company.connect() as first, sqlite_company.connect() as second:
        for connection in (first, second):
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 30_000


def test_a_failing_query_names_the_database_error(sqlite_company):
    reader = columnar.ColumnarReader(sqlite_company.url.database)
    try:
        with pytest.raises(columnar.ColumnarReadError, match="no such table: nowhere"):
            reader.execute("SELECT * FROM nowhere", [])
        assert reader.execute("SELECT COUNT(*) AS n FROM customers", []).column("n").to_pylist() == [300]
    finally:
        reader.close()
    # The results were handed over as files in a private folder: nothing is left behind.
    assert not Path(reader._folder).exists()


def test_a_helper_that_cannot_start_leaves_the_run_reading_row_by_row(sqlite_company, config, monkeypatch, caplog):
    monkeypatch.setattr(columnar.sys, "executable", "/bin/false")
    with store.consistent_read(sqlite_company, columnar=True) as connection:
        assert connection.get_execution_options().get(COLUMNAR_OPTION) is None
    assert "reading row by row instead: the columnar reader could not open" in caplog.text
    outcome, _ = full_rescore(sqlite_company, config, AS_OF)
    assert outcome.customers == 300


def test_results_go_to_shared_memory_only_when_it_has_room(tmp_path, monkeypatch):
    class Room:
        def __init__(self, free: int) -> None:
            self.f_bavail, self.f_frsize = free, 1

    monkeypatch.setattr(columnar.os, "statvfs", lambda path: Room(64 << 20))  # a container's default /dev/shm
    assert columnar.results_folder(str(tmp_path)) is None
    monkeypatch.setattr(columnar.os, "statvfs", lambda path: Room(8 << 30))
    assert columnar.results_folder(str(tmp_path)) == str(tmp_path)
    monkeypatch.undo()
    assert columnar.results_folder(str(tmp_path / "missing")) is None
