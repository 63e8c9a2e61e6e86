"""inbound sender key: the From address stored with each message, for the claim's fresh lane

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 18:55:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows stored before keep NULL: they never take the fresh lane and are claimed oldest-first as before.
    with op.batch_alter_table('inbound_message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sender_key', sa.String(length=320), nullable=True))
        batch_op.create_index('ix_inbound_message_sender_key_status_id', ['sender_key', 'status', 'id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('inbound_message', schema=None) as batch_op:
        batch_op.drop_index('ix_inbound_message_sender_key_status_id')
        batch_op.drop_column('sender_key')
