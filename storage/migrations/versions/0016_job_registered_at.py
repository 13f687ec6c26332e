"""job registered_at: a new install's second process does not catch up a slot before the
install (the first process's row no longer reads as a job known since long ago)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 03:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job_state') as batch_op:
        batch_op.add_column(sa.Column('registered_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job_state') as batch_op:
        batch_op.drop_column('registered_at')
