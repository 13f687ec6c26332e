"""score reason chunks: a run stores the inputs of its reasons, compressed, a chunk of
customers at a time, instead of every customer's reasons as JSON; each customer's
hysteresis state on its own row, so a run need not read the last run's snapshot

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
    with op.batch_alter_table('customers') as batch_op:
        batch_op.add_column(sa.Column('pending_tier', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('pending_runs', sa.Integer(), server_default='0', nullable=False))
    # The state the latest full run left (incremental rescores update its rows in place).
    op.execute("""
        UPDATE customers SET
            pending_tier = (SELECT s.pending_tier FROM score_snapshots s
                            WHERE s.customer_id = customers.customer_id AND s.run_id = (
                                SELECT MAX(id) FROM score_runs WHERE status = 'succeeded' AND kind = 'full')),
            pending_runs = COALESCE((SELECT s.pending_runs FROM score_snapshots s
                                     WHERE s.customer_id = customers.customer_id AND s.run_id = (
                                         SELECT MAX(id) FROM score_runs WHERE status = 'succeeded' AND kind = 'full')),
                                    0)
        WHERE EXISTS (SELECT 1 FROM score_snapshots s WHERE s.customer_id = customers.customer_id
                      AND s.pending_tier IS NOT NULL AND s.run_id = (
                          SELECT MAX(id) FROM score_runs WHERE status = 'succeeded' AND kind = 'full'))""")


def downgrade() -> None:
    with op.batch_alter_table('customers') as batch_op:
        batch_op.drop_column('pending_runs')
        batch_op.drop_column('pending_tier')
    with op.batch_alter_table('score_snapshots') as batch_op:
        batch_op.drop_column('reasons_chunk')
    op.drop_table('score_reason_chunks')
