"""snapshot label codes: every model's label but the value matrix's, as one integer per
snapshot row, so that lists can filter by RFM segment, S/A/B/C, pyramid, lifecycle or intent

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 14:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Earlier runs keep their labels in their chunks only: their rows stay NULL, and the
    # lists by label wait for the next full run.
    with op.batch_alter_table('score_snapshots') as batch_op:
        batch_op.add_column(sa.Column('label_codes', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('score_snapshots') as batch_op:
        batch_op.drop_column('label_codes')
