"""customer windows: per-customer totals over whole months, kept by the import; covering
indexes for the day-level windows

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 19:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

MONEY = sa.Numeric(precision=18, scale=2, asdecimal=False)


def upgrade() -> None:
    money = ["revenue_12m", "cost_12m", "repeat_revenue_12m"]
    counts = ["orders_12m"]
    more_money = ["revenue_12_24m", "revenue_24_36m", "revenue_m1", "revenue_m2", "revenue_m3", "revenue_m4",
                  "lifetime_revenue"]
    op.create_table('customer_windows',
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('customer_id', sa.String(length=64), nullable=False),
    *(sa.Column(name, MONEY, server_default='0', nullable=False) for name in money),
    *(sa.Column(name, sa.Integer(), server_default='0', nullable=False) for name in counts),
    *(sa.Column(name, MONEY, server_default='0', nullable=False) for name in more_money),
    sa.Column('lifetime_orders', sa.Integer(), server_default='0', nullable=False),
    sa.Column('purchase_days', sa.Integer(), server_default='0', nullable=False),
    sa.Column('first_day_revenue', MONEY, server_default='0', nullable=False),
    sa.Column('first_order_date', sa.Date(), nullable=True),
    sa.Column('last_order_date', sa.Date(), nullable=True),
    sa.Column('baseline_events', sa.Integer(), server_default='0', nullable=False),
    sa.Column('baseline_last_ts', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.customer_id'],
                            name=op.f('fk_customer_windows_customer_id_customers')),
    sa.PrimaryKeyConstraint('month', 'customer_id', name=op.f('pk_customer_windows')),
    sqlite_with_rowid=False
    )
    op.create_table('window_months',
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('built_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('month', name=op.f('pk_window_months'))
    )


    # Covering indexes for a run's day-level windows (storage.models Order / Activity).
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_order_date')
        batch_op.create_index('ix_orders_day', ['order_date', 'customer_id', 'amount', 'cost', 'kind'], unique=False)
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.drop_index('ix_activities_kind_ts')
        batch_op.create_index('ix_activities_kind_window', ['kind', 'ts', 'customer_id', 'detail'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.drop_index('ix_activities_kind_window')
        batch_op.create_index('ix_activities_kind_ts', ['kind', 'ts', 'customer_id'], unique=False)
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_day')
        batch_op.create_index('ix_orders_order_date', ['order_date'], unique=False)
    op.drop_table('window_months')
    op.drop_table('customer_windows')
