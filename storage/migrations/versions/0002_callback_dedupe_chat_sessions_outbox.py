"""callback dedupe, chat sessions, outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 15:10:51.798734
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('callback_seen',
    sa.Column('dedupe_key', sa.String(length=160), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('dedupe_key', name=op.f('pk_callback_seen'))
    )
    with op.batch_alter_table('callback_seen', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_callback_seen_received_at'), ['received_at'], unique=False)

    op.create_table('chat_sessions',
    sa.Column('userid', sa.String(length=64), nullable=False),
    sa.Column('command', sa.String(length=64), nullable=False),
    sa.Column('arguments', sa.JSON(), nullable=False),
    sa.Column('next_offset', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('userid', name=op.f('pk_chat_sessions'))
    )
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('touser', sa.Text(), nullable=False),
    sa.Column('msgtype', sa.String(length=32), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('not_before', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('origin', sa.String(length=160), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'sending', 'sent', 'failed')", name=op.f('ck_outbox_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
    sa.UniqueConstraint('origin', name=op.f('uq_outbox_origin'))
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_due', ['status', 'not_before'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_due')

    op.drop_table('outbox')
    op.drop_table('chat_sessions')
    with op.batch_alter_table('callback_seen', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_callback_seen_received_at'))

    op.drop_table('callback_seen')
