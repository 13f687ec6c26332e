"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 14:59:39.000835
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('score_runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('as_of', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=16), server_default='full', nullable=False),
    sa.Column('customers', sa.Integer(), nullable=True),
    sa.Column('tier_changes', sa.Integer(), nullable=True),
    sa.Column('config_hash', sa.String(length=32), nullable=False),
    sa.Column('summary', sa.JSON(), nullable=True),
    sa.Column('reference', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('running', 'succeeded', 'failed')", name=op.f('ck_score_runs_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_score_runs'))
    )
    with op.batch_alter_table('score_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_score_runs_status'), ['status'], unique=False)

    op.create_table('users',
    sa.Column('userid', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('manager_userid', sa.String(length=64), nullable=True),
    sa.Column('team', sa.String(length=128), nullable=True),
    sa.Column('queues', sa.String(length=512), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("role IN ('rep', 'manager', 'agent', 'admin')", name=op.f('ck_users_role')),
    sa.ForeignKeyConstraint(['manager_userid'], ['users.userid'], name=op.f('fk_users_manager_userid_users')),
    sa.PrimaryKeyConstraint('userid', name=op.f('pk_users'))
    )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_users_manager_userid'), ['manager_userid'], unique=False)

    op.create_table('customers',
    sa.Column('customer_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('owner_userid', sa.String(length=64), nullable=True),
    sa.Column('industry', sa.String(length=64), nullable=True),
    sa.Column('region', sa.String(length=64), nullable=True),
    sa.Column('employees', sa.Integer(), nullable=True),
    sa.Column('customer_type', sa.String(length=16), nullable=True),
    sa.Column('is_listed', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('is_benchmark', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('is_partner', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('digital_maturity', sa.Integer(), nullable=True),
    sa.Column('expansion_plan', sa.String(length=64), nullable=True),
    sa.Column('modules_owned', sa.String(length=512), nullable=True),
    sa.Column('created_at', sa.Date(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tier', sa.String(length=16), nullable=True),
    sa.Column('tier_since', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("customer_type IN ('end_user', 'dealer', 'integrator')", name=op.f('ck_customers_customer_type')),
    sa.CheckConstraint('digital_maturity BETWEEN 1 AND 5', name=op.f('ck_customers_digital_maturity')),
    sa.ForeignKeyConstraint(['owner_userid'], ['users.userid'], name=op.f('fk_customers_owner_userid_users')),
    sa.PrimaryKeyConstraint('customer_id', name=op.f('pk_customers'))
    )
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_customers_name'), ['name'], unique=False)
        batch_op.create_index('ix_customers_owner_tier', ['owner_userid', 'tier'], unique=False)
        batch_op.create_index(batch_op.f('ix_customers_owner_userid'), ['owner_userid'], unique=False)

    op.create_table('score_snapshots',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.String(length=64), nullable=False),
    sa.Column('tier', sa.String(length=16), nullable=False),
    sa.Column('current_value', sa.Float(), nullable=False),
    sa.Column('potential_value', sa.Float(), nullable=False),
    sa.Column('revenue_12m', sa.Float(), server_default='0', nullable=False),
    sa.Column('pending_tier', sa.String(length=16), nullable=True),
    sa.Column('pending_runs', sa.Integer(), server_default='0', nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('scores', sa.JSON(), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['score_runs.id'], name=op.f('fk_score_snapshots_run_id_score_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'customer_id', name=op.f('pk_score_snapshots'))
    )
    op.create_table('activities',
    sa.Column('activity_id', sa.String(length=64), nullable=False),
    sa.Column('customer_id', sa.String(length=64), nullable=False),
    sa.Column('ts', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.CheckConstraint("kind IN ('login', 'visit', 'page_view', 'download', 'event', 'call', 'meeting', 'complaint')", name=op.f('ck_activities_kind')),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.customer_id'], name=op.f('fk_activities_customer_id_customers')),
    sa.PrimaryKeyConstraint('activity_id', name=op.f('pk_activities'))
    )
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.create_index('ix_activities_rollup', ['customer_id', 'ts', 'kind'], unique=False)
        batch_op.create_index('ix_activities_kind_ts', ['kind', 'ts', 'customer_id'], unique=False)
        batch_op.create_index('ix_activities_ts', ['ts'], unique=False)

    op.create_table('activity_months',
    sa.Column('customer_id', sa.String(length=64), nullable=False),
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('events', sa.Integer(), nullable=False),
    sa.Column('last_ts', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.customer_id'], name=op.f('fk_activity_months_customer_id_customers')),
    sa.PrimaryKeyConstraint('customer_id', 'month', 'kind', name=op.f('pk_activity_months')),
    sqlite_with_rowid=False,
    )
    op.create_table('customer_months',
    sa.Column('customer_id', sa.String(length=64), nullable=False),
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('revenue', sa.Numeric(precision=18, scale=2, asdecimal=False), nullable=False),
    sa.Column('cost', sa.Numeric(precision=18, scale=2, asdecimal=False), nullable=False),
    sa.Column('repeat_revenue', sa.Numeric(precision=18, scale=2, asdecimal=False), nullable=False),
    sa.Column('orders', sa.Integer(), nullable=False),
    sa.Column('purchase_days', sa.Integer(), server_default='0', nullable=False),
    sa.Column('first_day_revenue', sa.Numeric(precision=18, scale=2, asdecimal=False), server_default='0', nullable=False),
    sa.Column('first_order_date', sa.Date(), nullable=False),
    sa.Column('last_order_date', sa.Date(), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.customer_id'], name=op.f('fk_customer_months_customer_id_customers')),
    sa.PrimaryKeyConstraint('customer_id', 'month', name=op.f('pk_customer_months')),
    sqlite_with_rowid=False,
    )
    with op.batch_alter_table('customer_months', schema=None) as batch_op:
        batch_op.create_index('ix_customer_months_month', ['month'], unique=False)

    op.create_table('orders',
    sa.Column('order_id', sa.String(length=64), nullable=False),
    sa.Column('customer_id', sa.String(length=64), nullable=False),
    sa.Column('order_date', sa.Date(), nullable=False),
    sa.Column('amount', sa.Numeric(precision=18, scale=2, asdecimal=False), nullable=False),
    sa.Column('cost', sa.Numeric(precision=18, scale=2, asdecimal=False), nullable=True),
    sa.Column('product_line', sa.String(length=64), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=True),
    sa.CheckConstraint("kind IN ('new', 'renewal', 'upsell', 'service')", name=op.f('ck_orders_kind')),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.customer_id'], name=op.f('fk_orders_customer_id_customers')),
    sa.PrimaryKeyConstraint('order_id', name=op.f('pk_orders'))
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_order_date', ['order_date'], unique=False)
        batch_op.create_index('ix_orders_rollup', ['customer_id', 'order_date', 'amount', 'cost', 'kind'], unique=False)

    op.create_table('tickets',
    sa.Column('ticket_id', sa.String(length=64), nullable=False),
    sa.Column('customer_id', sa.String(length=64), nullable=False),
    sa.Column('opened_at', sa.DateTime(), nullable=False),
    sa.Column('subject', sa.String(length=512), nullable=False),
    sa.Column('severity', sa.String(length=4), nullable=True),
    sa.Column('status', sa.String(length=16), server_default='open', nullable=False),
    sa.CheckConstraint("severity IN ('P1', 'P2', 'P3', 'P4')", name=op.f('ck_tickets_severity')),
    sa.CheckConstraint("status IN ('open', 'accepted', 'resolved', 'closed')", name=op.f('ck_tickets_status')),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.customer_id'], name=op.f('fk_tickets_customer_id_customers')),
    sa.PrimaryKeyConstraint('ticket_id', name=op.f('pk_tickets'))
    )
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tickets_customer_id'), ['customer_id'], unique=False)

    op.create_table('tier_history',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('customer_id', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=32), server_default='value_matrix', nullable=False),
    sa.Column('from_tier', sa.String(length=16), nullable=True),
    sa.Column('to_tier', sa.String(length=16), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.customer_id'], name=op.f('fk_tier_history_customer_id_customers')),
    sa.ForeignKeyConstraint(['run_id'], ['score_runs.id'], name=op.f('fk_tier_history_run_id_score_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tier_history'))
    )
    with op.batch_alter_table('tier_history', schema=None) as batch_op:
        batch_op.create_index('ix_tier_history_customer', ['customer_id', 'changed_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('tier_history', schema=None) as batch_op:
        batch_op.drop_index('ix_tier_history_customer')

    op.drop_table('tier_history')
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tickets_customer_id'))

    op.drop_table('tickets')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_rollup')
        batch_op.drop_index('ix_orders_order_date')

    op.drop_table('orders')
    with op.batch_alter_table('customer_months', schema=None) as batch_op:
        batch_op.drop_index('ix_customer_months_month')

    op.drop_table('customer_months')
    op.drop_table('activity_months')
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.drop_index('ix_activities_ts')
        batch_op.drop_index('ix_activities_rollup')

    op.drop_table('activities')
    op.drop_table('score_snapshots')
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customers_owner_userid'))
        batch_op.drop_index('ix_customers_owner_tier')
        batch_op.drop_index(batch_op.f('ix_customers_name'))

    op.drop_table('customers')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_users_manager_userid'))

    op.drop_table('users')
    with op.batch_alter_table('score_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_score_runs_status'))

    op.drop_table('score_runs')
