"""rescore pending: customers whose new data is committed and whose incremental rescore
has not run yet, so that a process stopped in between loses no rescore

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 12:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'rescore_pending',
        sa.Column('customer_id', sa.String(length=64), nullable=False),
        sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['customers.customer_id'],
                                name=op.f('fk_rescore_pending_customer_id_customers')),
        sa.PrimaryKeyConstraint('customer_id', name=op.f('pk_rescore_pending')),
    )


def downgrade() -> None:
    op.drop_table('rescore_pending')
