"""tickets routing, agent state

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 17:38:07.851763
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('agent_state',
    sa.Column('userid', sa.String(length=64), nullable=False),
    sa.Column('away', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('away_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_assigned_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['userid'], ['users.userid'], name=op.f('fk_agent_state_userid_users')),
    sa.PrimaryKeyConstraint('userid', name=op.f('pk_agent_state'))
    )
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('product_line', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('source', sa.String(length=16), server_default='import', nullable=False))
        batch_op.add_column(sa.Column('opened_by', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('tier', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('route', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('queue', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('priority', sa.String(length=4), nullable=True))
        batch_op.add_column(sa.Column('assignee_userid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('routed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('self_service_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('first_response_due', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('resolution', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('warned_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('breached_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_tickets_assignee_status', ['assignee_userid', 'status'], unique=False)
        batch_op.create_index('ix_tickets_status_due', ['status', 'first_response_due'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_tickets_assignee_userid_users'), 'users', ['assignee_userid'], ['userid'])
        batch_op.drop_constraint(op.f('ck_tickets_status'), type_='check')
        batch_op.create_check_constraint(
            op.f('ck_tickets_status'), "status IN ('self_service', 'open', 'accepted', 'resolved', 'closed')")



def downgrade() -> None:
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_tickets_status'), type_='check')
        batch_op.create_check_constraint(op.f('ck_tickets_status'), "status IN ('open', 'accepted', 'resolved', 'closed')")
        batch_op.drop_constraint(batch_op.f('fk_tickets_assignee_userid_users'), type_='foreignkey')
        batch_op.drop_index('ix_tickets_status_due')
        batch_op.drop_index('ix_tickets_assignee_status')
        batch_op.drop_column('breached_at')
        batch_op.drop_column('warned_at')
        batch_op.drop_column('resolution')
        batch_op.drop_column('resolved_at')
        batch_op.drop_column('accepted_at')
        batch_op.drop_column('first_response_due')
        batch_op.drop_column('self_service_until')
        batch_op.drop_column('routed_at')
        batch_op.drop_column('assignee_userid')
        batch_op.drop_column('priority')
        batch_op.drop_column('queue')
        batch_op.drop_column('route')
        batch_op.drop_column('tier')
        batch_op.drop_column('opened_by')
        batch_op.drop_column('source')
        batch_op.drop_column('product_line')

    op.drop_table('agent_state')
