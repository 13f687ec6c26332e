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


def database_at(tmp_path, revision: str):
    """(url, engine) of a SQLite database migrated only as far as `revision`."""
    from alembic import command

    from storage.db import alembic_config, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), revision)
    return url, make_engine(url)


def test_upgrading_to_reason_chunks_moves_the_hysteresis_state_onto_customers(tmp_path):
    """0006: the state a customer heading for another tier is in comes from the latest
    full run's snapshot, so no customer starts counting its runs again."""
    from sqlalchemy import text

    url, engine = database_at(tmp_path, "0005")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO customers (customer_id, name, updated_at) VALUES "
                                "('HEADING', 'a', '2026-11-01'), ('STILL', 'b', '2026-11-01')"))
        for run_id, status in ((1, "succeeded"), (2, "succeeded"), (3, "failed")):
            connection.execute(text("INSERT INTO score_runs (id, started_at, as_of, status, kind, config_hash) "
                                    "VALUES (:id, '2026-11-01', '2026-11-01', :status, 'full', 'x')"),
                               {"id": run_id, "status": status})
        for run_id, customer_id, heading, runs in ((1, "HEADING", "dog", 1), (2, "HEADING", "star", 2),
                                                   (3, "HEADING", "dog", 9), (2, "STILL", None, 0)):
            connection.execute(text(
                "INSERT INTO score_snapshots (run_id, customer_id, tier, current_value, potential_value, "
                "pending_tier, pending_runs, labels, scores, reasons) "
                "VALUES (:run, :customer, 'cash_cow', 71, 40, :heading, :runs, '{}', '{}', '{}')"),
                {"run": run_id, "customer": customer_id, "heading": heading, "runs": runs})
    upgrade_schema(url)
    with engine.connect() as connection:
        state = dict((row[0], tuple(row[1:])) for row in connection.execute(
            text("SELECT customer_id, pending_tier, pending_runs FROM customers")))
    engine.dispose()
    assert state == {"HEADING": ("star", 2), "STILL": (None, 0)}


def test_upgrading_to_snapshot_churn_scores_copies_them_out_of_older_runs(tmp_path):
    """0007: runs written before it keep labels and scores as JSON per row; their churn
    score becomes the column the churn list sorts by, and their documents still read."""
    from sqlalchemy import text

    from storage.scores import StoredSnapshot

    url, engine = database_at(tmp_path, "0006")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO score_runs (id, started_at, as_of, status, kind, config_hash) "
                                "VALUES (1, '2026-11-01', '2026-11-01', 'succeeded', 'full', 'x')"))
        for customer_id, labels, scores in (("RISKY", '{"churn": "high"}', '{"churn": 81.5, "rfm": 40}'),
                                            ("UNSCORED", '{}', '{}')):
            connection.execute(text(
                "INSERT INTO score_snapshots (run_id, customer_id, tier, current_value, potential_value, "
                "pending_runs, labels, scores, reasons) "
                "VALUES (1, :customer, 'dog', 10, 20, 0, :labels, :scores, '{}')"),
                {"customer": customer_id, "labels": labels, "scores": scores})
    upgrade_schema(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT customer_id, churn_score, labels, scores, reasons_chunk "
                                       "FROM score_snapshots ORDER BY customer_id")).all()
        reader = StoredSnapshot().fetch(connection, 1, [(row[0], None, row[4]) for row in rows])
    engine.dispose()
    assert [(row[0], row[1]) for row in rows] == [("RISKY", 81.5), ("UNSCORED", None)]
    assert reader.documents([(row[0], row[2], row[4]) for row in rows], "labels") == [{"churn": "high"}, {}]
    assert reader.documents([(row[0], row[3], row[4]) for row in rows], "scores") == [{"churn": 81.5, "rfm": 40}, {}]


def test_json_the_json_module_wrote_before_still_reads(tmp_path):
    """JSON columns are now written and read with orjson, which refuses NaN; the json
    module wrote NaN for a missing number, and such rows must still read."""
    import math

    from sqlalchemy import text

    from storage.db import make_engine
    from storage.models import OutboxMessage

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade_schema(url)
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO outbox (created_at, touser, msgtype, payload, status, attempts, kind, channel, batch_every,"
            " batch_item) VALUES ('2026-11-01 00:00:00', 'rep_a', 'markdown', '{}', 'pending', 0, 'churn_alert',"
            " 'app', 0, '{\"name\": \"星辰\", \"revenue_12m\": NaN}')"))
    with engine.connect() as connection:
        item = connection.execute(select(OutboxMessage.batch_item)).scalar_one()
    engine.dispose()
    assert item["name"] == "星辰" and math.isnan(item["revenue_12m"])


def test_upgrading_to_routed_severity_does_not_route_existing_tickets_again(tmp_path):
    """0011: tickets routed before it were routed for the severity they have now."""
    from sqlalchemy import text

    url, engine = database_at(tmp_path, "0010")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO customers (customer_id, name, updated_at) VALUES ('C1', 'a', '2026-11-01')"))
        connection.execute(text(
            "INSERT INTO tickets (ticket_id, customer_id, opened_at, subject, severity, status, source, routed_at) "
            "VALUES ('ROUTED', 'C1', '2026-11-01', 's', 'P2', 'open', 'import', '2026-11-01'), "
            "       ('WAITING', 'C1', '2026-11-01', 's', 'P2', 'open', 'import', NULL)"))
    upgrade_schema(url)
    with engine.connect() as connection:
        routed = dict(connection.execute(text("SELECT ticket_id, routed_severity FROM tickets")).all())
    engine.dispose()
    assert routed == {"ROUTED": "P2", "WAITING": None}


def test_upgrading_to_refunds_are_not_purchases_rebuilds_the_roll_ups_they_were_counted_in(tmp_path):
    """0012: a customer with a day of refunds had it counted as a purchase day in its monthly
    roll-up; the upgrade rebuilds that customer's roll-ups, and nobody else's."""
    from sqlalchemy import text

    url, engine = database_at(tmp_path, "0011")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO customers (customer_id, name, updated_at) VALUES "
                                "('LOST', 'a', '2026-11-01'), ('FINE', 'b', '2026-11-01')"))
        connection.execute(text("INSERT INTO orders (order_id, customer_id, order_date, amount) VALUES "
                                "('L1', 'LOST', '2024-03-05', 100000), ('L2', 'LOST', '2026-05-20', -100000), "
                                "('F1', 'FINE', '2026-05-21', 300)"))
        # As the code before 0012 rolled them up; FINE's row is left wrong on purpose, to
        # show that only customers with refunds are rebuilt.
        connection.execute(text(
            "INSERT INTO customer_months (customer_id, month, revenue, cost, repeat_revenue, orders, purchase_days, "
            "first_day_revenue, first_order_date, last_order_date) VALUES "
            "('LOST', '2024-03-01', 100000, 0, 0, 1, 1, 100000, '2024-03-05', '2024-03-05'), "
            "('LOST', '2026-05-01', -100000, 0, 0, 1, 1, -100000, '2026-05-20', '2026-05-20'), "
            "('FINE', '2026-05-01', 999, 0, 0, 1, 1, 999, '2026-05-21', '2026-05-21')"))
    upgrade_schema(url)
    with engine.connect() as connection:
        months = connection.execute(text(
            "SELECT customer_id, month, revenue, purchase_days, first_order_date FROM customer_months "
            "ORDER BY customer_id, month")).all()
    engine.dispose()
    assert [tuple(row) for row in months] == [
        ("FINE", "2026-05-01", 999, 1, "2026-05-21"),
        ("LOST", "2024-03-01", 100000, 1, "2024-03-05"), ("LOST", "2026-05-01", -100000, 0, None)]


def test_upgrading_to_refund_rows_are_no_orders_recounts_the_orders_of_customers_with_refunds(tmp_path):
    """0015: a month's orders counted its refund rows; the upgrade recounts them for the
    customers with refunds, and nobody else."""
    from sqlalchemy import text

    url, engine = database_at(tmp_path, "0014")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO customers (customer_id, name, updated_at) VALUES "
                                "('BACK', 'a', '2026-11-01'), ('FINE', 'b', '2026-11-01')"))
        connection.execute(text("INSERT INTO orders (order_id, customer_id, order_date, amount) VALUES "
                                "('B1', 'BACK', '2026-05-04', 1000), ('B2', 'BACK', '2026-05-20', -400), "
                                "('F1', 'FINE', '2026-05-21', 300)"))
        # As the code before 0015 rolled them up; FINE's count is left wrong on purpose.
        connection.execute(text(
            "INSERT INTO customer_months (customer_id, month, revenue, cost, repeat_revenue, orders, purchase_days, "
            "first_day_revenue, first_order_date, last_order_date) VALUES "
            "('BACK', '2026-05-01', 600, 0, 0, 2, 1, 1000, '2026-05-04', '2026-05-04'), "
            "('FINE', '2026-05-01', 300, 0, 0, 7, 1, 300, '2026-05-21', '2026-05-21')"))
    upgrade_schema(url)
    with engine.connect() as connection:
        orders = dict(connection.execute(text("SELECT customer_id, orders FROM customer_months")).all())
    engine.dispose()
    assert orders == {"BACK": 1, "FINE": 7}
