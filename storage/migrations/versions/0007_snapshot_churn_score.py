"""snapshot churn score: a run keeps its labels and scores in its chunks, not as JSON per
row; the churn score, which the churn list filters and sorts by, becomes a column

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 06:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('score_snapshots') as batch_op:
        batch_op.add_column(sa.Column('churn_score', sa.Float(), nullable=True))
    # Earlier runs keep their labels and scores as JSON; their churn score is copied out.
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("UPDATE score_snapshots SET churn_score = CAST(scores ->> 'churn' AS DOUBLE PRECISION)")
    else:
        op.execute("UPDATE score_snapshots SET churn_score = CAST(json_extract(scores, '$.churn') AS REAL)")


def downgrade() -> None:
    # Runs written since 0007 keep their labels and scores only in their chunks, which the
    # code before 0007 does not read: run a full rescore after downgrading.
    with op.batch_alter_table('score_snapshots') as batch_op:
        batch_op.drop_column('churn_score')
