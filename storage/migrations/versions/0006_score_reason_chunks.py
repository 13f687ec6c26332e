"""score reason chunks: a run stores the inputs of its reasons, compressed, a chunk of
customers at a time, instead of every customer's reasons as JSON

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 04:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('score_reason_chunks',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('chunk', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('customers', sa.Integer(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['score_runs.id'], name=op.f('fk_score_reason_chunks_run_id_score_runs'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'chunk', name=op.f('pk_score_reason_chunks'))
    )
    with op.batch_alter_table('score_snapshots') as batch_op:
        batch_op.add_column(sa.Column('reasons_chunk', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('score_snapshots') as batch_op:
        batch_op.drop_column('reasons_chunk')
    op.drop_table('score_reason_chunks')
