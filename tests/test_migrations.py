"""The migrations build exactly the schema the models describe, and upgrading a database
that already holds data keeps the data."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from storage.db import upgrade_schema
from storage.importer import run_import
from storage.models import Base, Order
from tests.company import write_company


def test_migrated_schema_matches_the_models(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_upgrading_again_keeps_existing_data(engine, database_url, tmp_path):
    run_import(engine, [write_company(tmp_path / "crm")])
    upgrade_schema(database_url)
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(Order)).scalar_one() == 914
