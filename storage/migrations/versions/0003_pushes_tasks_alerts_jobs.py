"""pushes: outbox batching, tasks, churn alert state, job leases

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 17:11:01.878860
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('job_state',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_slot', sa.String(length=64), nullable=True),
    sa.Column('last_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_job_state'))
    )
    op.create_table('outbox_batches',
    sa.Column('batch_key', sa.String(length=160), nullable=False),
    sa.Column('last_sent_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('batch_key', name=op.f('pk_outbox_batches'))
    )
    op.create_table('churn_alert_state',
    sa.Column('customer_id', sa.String(length=64), nullable=False),
    sa.Column('alerted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('churn_score', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.customer_id'], name=op.f('fk_churn_alert_state_customer_id_customers')),
    sa.PrimaryKeyConstraint('customer_id', name=op.f('pk_churn_alert_state'))
    )
    op.create_table('tasks',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('customer_id', sa.String(length=64), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('owner_userid', sa.String(length=64), nullable=False),
    sa.Column('title_zh', sa.String(length=256), nullable=False),
    sa.Column('title_en', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('due_date', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='open', nullable=False),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('snoozed_until', sa.Date(), nullable=True),
    sa.Column('tier', sa.String(length=16), nullable=True),
    sa.Column('churn_score', sa.Float(), server_default='0', nullable=False),
    sa.Column('value_at_stake', sa.Float(), server_default='0', nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.Column('card_task_id', sa.String(length=128), nullable=True),
    sa.Column('overdue_notified', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.CheckConstraint("status IN ('open', 'done', 'cancelled')", name=op.f('ck_tasks_status')),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.customer_id'], name=op.f('fk_tasks_customer_id_customers')),
    sa.ForeignKeyConstraint(['owner_userid'], ['users.userid'], name=op.f('fk_tasks_owner_userid_users')),
    sa.ForeignKeyConstraint(['run_id'], ['score_runs.id'], name=op.f('fk_tasks_run_id_score_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks')),
    sa.UniqueConstraint('card_task_id', name=op.f('uq_tasks_card_task_id'))
    )
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index('ix_tasks_owner_status', ['owner_userid', 'status', 'due_date'], unique=False)
        batch_op.create_index('uq_tasks_open_rule_customer', ['rule', 'customer_id'], unique=True, sqlite_where=sa.text("status = 'open'"), postgresql_where=sa.text("status = 'open'"))

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=32), server_default='reply', nullable=False))
        batch_op.add_column(sa.Column('channel', sa.String(length=16), server_default='app', nullable=False))
        batch_op.add_column(sa.Column('batch_key', sa.String(length=160), nullable=True))
        batch_op.add_column(sa.Column('batch_every', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('batch_item', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('msgid', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('response_code', sa.String(length=256), nullable=True))
        batch_op.create_index('ix_outbox_sent', ['sent_at'], unique=False)
        batch_op.create_check_constraint(op.f('ck_outbox_channel'), "channel IN ('app', 'card_update', 'webhook')")



def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_outbox_channel'), type_='check')
        batch_op.drop_index('ix_outbox_sent')
        batch_op.drop_column('response_code')
        batch_op.drop_column('msgid')
        batch_op.drop_column('claimed_at')
        batch_op.drop_column('batch_item')
        batch_op.drop_column('batch_every')
        batch_op.drop_column('batch_key')
        batch_op.drop_column('channel')
        batch_op.drop_column('kind')

    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('uq_tasks_open_rule_customer', sqlite_where=sa.text("status = 'open'"), postgresql_where=sa.text("status = 'open'"))
        batch_op.drop_index('ix_tasks_owner_status')

    op.drop_table('tasks')
    op.drop_table('churn_alert_state')
    op.drop_table('outbox_batches')
    op.drop_table('job_state')
