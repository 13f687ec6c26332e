"""ticket routed severity: the severity a ticket's route was chosen for, so that a ticket
re-sent with another severity is routed again, as a tier change already does

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 20:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tickets') as batch_op:
        batch_op.add_column(sa.Column('routed_severity', sa.String(length=4), nullable=True))
    # Tickets routed before this column existed were routed for the severity they have now:
    # upgrading must not re-route them all.
    op.execute("UPDATE tickets SET routed_severity = severity WHERE routed_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('tickets') as batch_op:
        batch_op.drop_column('routed_severity')
