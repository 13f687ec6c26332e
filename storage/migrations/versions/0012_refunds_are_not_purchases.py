"""refunds are not purchases: a day whose orders net to 0 or less is no purchase day, so a
month of refunds only has no first or last purchase date

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 01:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('customer_months', table_kwargs={'sqlite_with_rowid': False}) as batch_op:
        batch_op.alter_column('first_order_date', existing_type=sa.Date(), nullable=True)
        batch_op.alter_column('last_order_date', existing_type=sa.Date(), nullable=True)
    # The roll-ups of customers with a day that nets to 0 or less counted it as a purchase.
    # They are rebuilt by the importer's own code, so that they match what it writes now.
    from storage.importer import rebuild_rollups

    connection = op.get_bind()
    connection.execute(sa.text("CREATE TEMPORARY TABLE touched_customers (customer_id VARCHAR(64) PRIMARY KEY)"))
    connection.execute(sa.text("""
        INSERT INTO touched_customers (customer_id)
        SELECT DISTINCT customer_id FROM (
            SELECT customer_id, order_date FROM orders GROUP BY customer_id, order_date HAVING SUM(amount) <= 0
        ) refund_days"""))
    rebuild_rollups(connection)
    connection.execute(sa.text("DROP TABLE touched_customers"))


def downgrade() -> None:
    # Months of refunds only keep no dates; the older code needs one on every row.
    op.execute("DELETE FROM customer_months WHERE first_order_date IS NULL")
    with op.batch_alter_table('customer_months', table_kwargs={'sqlite_with_rowid': False}) as batch_op:
        batch_op.alter_column('first_order_date', existing_type=sa.Date(), nullable=False)
        batch_op.alter_column('last_order_date', existing_type=sa.Date(), nullable=False)
