"""Database lanes: every test that takes `engine` or `database_url` runs on SQLite, and
again on PostgreSQL when TIERBOT_TEST_DATABASE_URL is set (as .ci/run does)."""

from __future__ import annotations

import csv
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select, text

from bot.emulator import (EMULATOR, SANDBOX_AGENT_ID, SANDBOX_CORP_ID, SANDBOX_SECRET, RedactingAccessLogger,
                          SharedClock, create_emulator_app)
from bot.metrics import Metrics
from bot.wecom_client import WebhookClient, WeComClient
from notifications.dispatcher import Dispatcher
from notifications.settings import PushesConfig
from storage.db import make_async_engine
from storage.models import OutboxMessage

from storage.db import make_engine, upgrade_schema
from storage.models import Base

POSTGRES_URL = os.environ.get("TIERBOT_TEST_DATABASE_URL", "")
LANES = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])
# Tests own a schema of their own, so they never touch anything else in that database.
PG_SCHEMA = "tierbot_test"


def _postgres_test_url() -> str:
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options=-csearch_path%3D{PG_SCHEMA}"


@pytest.fixture(autouse=True)
def _default_label_names():
    """Each test starts from templates/tiers.yaml's label names: a configuration an earlier
    test loaded (an RFM segment's title) is not this test's."""
    from handlers.text import use_label_names

    use_label_names({})


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


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory) -> Path:
    """An empty SQLite database at the newest schema, migrated once: each test starts from a
    copy (running the migrations took 0.09 s a test, a third of the SQLite lane's set-up)."""
    path = tmp_path_factory.mktemp("template") / "tierbot.db"
    upgrade_schema(f"sqlite:///{path}")
    leftovers = [p for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists() and p.stat().st_size]
    assert not leftovers, f"the template database was not closed cleanly: {leftovers}"
    return path


@pytest.fixture(params=LANES)
def database_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "tierbot.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("_postgres_schema")
    engine = make_engine(url)
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def config(database_url):
    """The default configuration on the test database. Files that need another define their own."""
    from bot.config import load_config

    return load_config(None, environ={"TIERBOT_DATABASE_URL": database_url})


@pytest.fixture
def company(engine, tmp_path):
    """The test company (tests/company.py) imported; the engine."""
    from storage.importer import run_import
    from tests.company import write_company

    run_import(engine, [write_company(tmp_path / "crm")])
    return engine


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


# -- pushes: the dispatcher against the WeCom emulator on one shared clock --------------------

# Monday 2026-11-23 10:00 in Shanghai: a working day, outside quiet hours.
MORNING = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)


@pytest.fixture
def clock() -> SharedClock:
    return SharedClock(MORNING)


@pytest.fixture
async def emulator(aiohttp_server, clock):
    app = create_emulator_app(known_users=["admin", "boss", "rep_a", "rep_b"] + [f"u{i}" for i in range(50)],
                              clock=clock)
    server = await aiohttp_server(app, access_log_class=RedactingAccessLogger)
    return server


@pytest.fixture
async def async_db(database_url):
    engine = make_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def make_dispatcher(emulator, async_db, clock):
    sessions = []

    async def make(webhook_key: str | None = None, **pushes) -> Dispatcher:
        session = aiohttp.ClientSession()
        sessions.append(session)
        client = WeComClient(session, SANDBOX_CORP_ID, SANDBOX_SECRET, SANDBOX_AGENT_ID,
                             str(emulator.make_url("/")), clock=clock)
        webhook = WebhookClient(session, webhook_key, str(emulator.make_url("/"))) if webhook_key else None
        return Dispatcher(async_db, client, pushes=PushesConfig(**pushes), language="zh", metrics=Metrics(),
                          clock=clock.utc, webhook=webhook)

    yield make
    for session in sessions:
        await session.close()


def state_of(emulator):
    return emulator.app[EMULATOR]


def outbox_counts(engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)).all()
    return {status: count for status, count in rows}
