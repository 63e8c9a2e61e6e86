"""records: legal holds, form copies, retention purge runs

Revision ID: 0005
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

def upgrade() -> None:
    op.create_table('legal_hold',
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('set_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('set_by', sa.String(length=320), nullable=False),
    sa.Column('reason', sa.Text(), server_default='', nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['case.id'], ),
    sa.PrimaryKeyConstraint('case_id')
    )
    op.create_table('form_copy',
    sa.Column('outbox_id', sa.Integer(), nullable=False),
    sa.Column('form', sa.String(length=64), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['case.id'], ),
    sa.ForeignKeyConstraint(['outbox_id'], ['outbox.id'], ),
    sa.PrimaryKeyConstraint('outbox_id', 'form')
    )
    with op.batch_alter_table('form_copy', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_form_copy_case_id'), ['case_id'], unique=False)
    op.create_table('purge_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('dry_run', sa.Boolean(), nullable=False),
    sa.Column('references', sa.JSON(), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )

def downgrade() -> None:
    op.drop_table('purge_run')
    with op.batch_alter_table('form_copy', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_form_copy_case_id'))
    op.drop_table('form_copy')
    op.drop_table('legal_hold')
