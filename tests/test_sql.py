"""storage.sql.insert_rows: the run's fast path for thousands of rows writes exactly what
SQLAlchemy's own insert writes."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from notifications.outbox import outbox_row
from storage.models import FollowUpTask, OutboxMessage
from storage.sql import insert_rows

NOW = datetime(2026, 11, 20, 1, 30, 15, 123456, tzinfo=timezone.utc)


def _outbox_rows(prefix: str) -> list[dict]:
    item = {"customer_id": "C001", "name": "华东精密制造", "reasons": [{"factor": "revenue_12m", "value": 3.2e6}]}
    return [
        outbox_row(["zhangsan"], "template_card", None, origin=f"{prefix}:held", kind="task",
                   not_before=NOW + timedelta(hours=7), batch_key="rep:zhangsan", batch_item=item, now=NOW),
        outbox_row(["lisi", "wangwu"], "markdown", {"content": "**流失预警** ok"}, origin=f"{prefix}:now",
                   kind="churn_alert", batch_every=3600, now=NOW),
    ]


def _read(engine, table, order_by, exclude: tuple[str, ...]) -> list[dict]:
    with engine.connect() as connection:
        rows = connection.execute(select(table).order_by(order_by)).mappings().all()
    return [{key: value for key, value in row.items() if key not in exclude} for row in rows]


def test_insert_rows_writes_what_sqlalchemys_insert_writes(engine):
    table = OutboxMessage.__table__
    with engine.begin() as connection:
        connection.execute(table.insert(), _outbox_rows("orm"))
        insert_rows(connection, table, _outbox_rows("fast"))
    rows = _read(engine, table, table.c.id, ("id",))
    assert len(rows) == 4
    by_origin = {row.pop("origin"): row for row in rows}
    for kind in ("held", "now"):
        assert by_origin[f"fast:{kind}"] == by_origin[f"orm:{kind}"]
    assert by_origin["fast:held"]["batch_item"]["name"] == "华东精密制造"
    assert by_origin["fast:now"]["not_before"] is None
    # Left out of the rows: its default.
    assert by_origin["fast:now"]["status"] == "pending"


def test_insert_rows_fills_defaults_the_rows_leave_out(company):
    engine, table = company, FollowUpTask.__table__
    base = {"customer_id": "STAR1", "rule": "visit", "owner_userid": "rep_a", "title_zh": "拜访", "title_en": "Visit",
            "created_at": NOW, "run_id": None, "due_date": date(2026, 11, 24), "tier": "star", "reasons": []}
    with engine.begin() as connection:
        connection.execute(table.insert(), [{**base, "rule": "orm"}])
        insert_rows(connection, table, [{**base, "rule": "fast"}])
    rows = {row.pop("rule"): row for row in _read(engine, table, table.c.id, ("id",))}
    assert rows["fast"] == rows["orm"]
    assert rows["fast"]["status"] == "open" and rows["fast"]["overdue_notified"] is False


def test_rows_naming_different_columns_are_refused_before_anything_is_written(engine):
    table = OutboxMessage.__table__
    first, second = _outbox_rows("mixed")
    del second["batch_item"]
    with pytest.raises(ValueError, match="every row must name the same columns"):
        with engine.begin() as connection:
            insert_rows(connection, table, [first, second])
    assert _read(engine, table, table.c.id, ()) == []


def test_equal_moments_in_other_time_zones_are_written_as_sqlalchemy_writes_each(engine):
    table = OutboxMessage.__table__
    shanghai = NOW.astimezone(timezone(timedelta(hours=8)))
    assert shanghai == NOW  # the same moment, another wall-clock time
    rows = []
    for prefix in ("orm", "fast"):
        for n, moment in enumerate((NOW, shanghai)):
            row = _outbox_rows(f"{prefix}:{n}")[1]
            rows.append({**row, "created_at": moment})
    with engine.begin() as connection:
        connection.execute(table.insert(), rows[:2])
        insert_rows(connection, table, rows[2:])
    found = {row["origin"]: row["created_at"] for row in _read(engine, table, table.c.id, ("id",))}
    assert found["fast:0:now"] == found["orm:0:now"]
    assert found["fast:1:now"] == found["orm:1:now"]


def test_values_equal_across_types_inside_documents_are_written_each_as_itself(company):
    engine, table = company, FollowUpTask.__table__
    base = {"customer_id": "STAR1", "owner_userid": "rep_a", "title_zh": "拜访", "title_en": "Visit",
            "created_at": NOW, "run_id": None, "due_date": date(2026, 11, 24), "tier": "star"}
    with engine.begin() as connection:
        insert_rows(connection, table, [{**base, "rule": "bool", "reasons": (True,)},
                                        {**base, "rule": "int", "reasons": (1,)},
                                        {**base, "rule": "float", "reasons": (1.5,)}])
    reasons = {row["rule"]: row["reasons"] for row in _read(engine, table, table.c.id, ())}
    assert reasons == {"bool": [True], "int": [1], "float": [1.5]}
    assert type(reasons["int"][0]) is int


def test_rows_inserted_before_the_transaction_began_still_roll_back(engine):
    table = OutboxMessage.__table__
    with engine.connect() as connection:
        insert_rows(connection, table, _outbox_rows("not-begun"))
        connection.rollback()
    assert _read(engine, table, table.c.id, ()) == []


def test_a_duplicate_origin_raises_sqlalchemys_integrity_error_and_writes_nothing(engine):
    table = OutboxMessage.__table__
    with engine.begin() as connection:
        insert_rows(connection, table, _outbox_rows("dup"))
    with pytest.raises(IntegrityError, match="origin"):
        with engine.begin() as connection:
            insert_rows(connection, table, [*_outbox_rows("other"), _outbox_rows("dup")[0]])
    assert sorted(row["origin"] for row in _read(engine, table, table.c.id, ())) == ["dup:held", "dup:now"]
