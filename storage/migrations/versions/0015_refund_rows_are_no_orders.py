"""refund rows are no orders: a negative amount no longer counts in a month's orders
(orders_12m, lifetime_orders)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 03:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The roll-ups of customers with a refund row counted it as an order. They are rebuilt
    # by the importer's own code, so that they match what it writes now.
    from storage.importer import rebuild_rollups

    connection = op.get_bind()
    connection.execute(sa.text("CREATE TEMPORARY TABLE touched_customers (customer_id VARCHAR(64) PRIMARY KEY)"))
    connection.execute(sa.text(
        "INSERT INTO touched_customers (customer_id) SELECT DISTINCT customer_id FROM orders WHERE amount < 0"))
    rebuild_rollups(connection)
    connection.execute(sa.text("DROP TABLE touched_customers"))


def downgrade() -> None:
    # No schema changed: older code reads the rebuilt roll-ups as they are (its next import
    # of those customers counts their refund rows again).
    pass
