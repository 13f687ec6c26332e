"""Database lanes: every test that takes `engine` or `database_url` runs on SQLite, and
again on PostgreSQL when TIERBOT_TEST_DATABASE_URL is set (as .ci/run does)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from storage.db import make_engine, upgrade_schema
from storage.models import Base

POSTGRES_URL = os.environ.get("TIERBOT_TEST_DATABASE_URL", "")
LANES = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])
# Tests own a schema of their own, so they never touch anything else in that database.
PG_SCHEMA = "tierbot_test"


def _postgres_test_url() -> str:
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options=-csearch_path%3D{PG_SCHEMA}"


@pytest.fixture(scope="session")
def _postgres_schema() -> str:
    engine = make_engine(POSTGRES_URL)
    with engine.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE"))
        connection.execute(text(f"CREATE SCHEMA {PG_SCHEMA}"))
    engine.dispose()
    url = _postgres_test_url()
    upgrade_schema(url)
    return url


@pytest.fixture(params=LANES)
def database_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tierbot.db'}"
        upgrade_schema(url)
        return url
    url = request.getfixturevalue("_postgres_schema")
    engine = make_engine(url)
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def engine(database_url: str):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def write_csv(path: Path, header: list[str], rows: list[list], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
