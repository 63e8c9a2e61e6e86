"""Workers and their claims, outbox priority, confirmed addresses, coordinator notices.

New NOT NULL columns carry a server default, so that rows written before them get one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('worker',
    sa.Column('owner', sa.String(length=255), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('start_ticks', sa.BigInteger(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('owner')
    )
    with op.batch_alter_table('worker', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_worker_heartbeat_at'), ['heartbeat_at'], unique=False)

    op.create_table('coordinator_notice',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('partnership', sa.String(length=64), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('digested_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['case.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('coordinator_notice', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_coordinator_notice_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_coordinator_notice_digested_at'), ['digested_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_coordinator_notice_partnership'), ['partnership'], unique=False)

    with op.batch_alter_table('case', schema=None) as batch_op:
        batch_op.add_column(sa.Column('confirmed_addresses', sa.JSON(), server_default='[]', nullable=False))

    with op.batch_alter_table('inbound_message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=255), nullable=True))

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=255), nullable=True))

    with op.batch_alter_table('timer', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=255), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('timer', schema=None) as batch_op:
        batch_op.drop_column('claimed_by')

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('claimed_by')
        batch_op.drop_column('priority')

    with op.batch_alter_table('inbound_message', schema=None) as batch_op:
        batch_op.drop_column('claimed_by')

    with op.batch_alter_table('case', schema=None) as batch_op:
        batch_op.drop_column('confirmed_addresses')

    with op.batch_alter_table('coordinator_notice', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_coordinator_notice_partnership'))
        batch_op.drop_index(batch_op.f('ix_coordinator_notice_digested_at'))
        batch_op.drop_index(batch_op.f('ix_coordinator_notice_case_id'))

    op.drop_table('coordinator_notice')
    with op.batch_alter_table('worker', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_worker_heartbeat_at'))

    op.drop_table('worker')
