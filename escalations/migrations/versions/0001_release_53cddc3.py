"""The schema of release 53cddc3, the last made by ``create_all`` before migrations.

A database that release made has exactly these tables and no alembic_version: it is stamped with
this revision, not created by it (escalations.cases.schema).

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('case',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reference', sa.String(length=32), nullable=False),
    sa.Column('partnership', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=True),
    sa.Column('stage_index', sa.Integer(), nullable=True),
    sa.Column('route', sa.String(length=64), nullable=True),
    sa.Column('stage_opened_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('raising_agency', sa.String(length=64), nullable=True),
    sa.Column('other_agency', sa.String(length=64), nullable=True),
    sa.Column('parties', sa.JSON(), nullable=False),
    sa.Column('resolution', sa.JSON(), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('raised_by_email', sa.String(length=320), nullable=True),
    sa.Column('immediate_risk', sa.Boolean(), nullable=False),
    sa.Column('fields', sa.JSON(), nullable=False),
    sa.Column('missing', sa.JSON(), nullable=False),
    sa.Column('policy_version', sa.String(length=128), nullable=True),
    sa.Column('policy_snapshot', sa.JSON(), nullable=False),
    sa.Column('origin_inbound_id', sa.Integer(), nullable=True),
    sa.Column('origin_message_id', sa.String(length=998), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('reference')
    )
    with op.batch_alter_table('case', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_due_at'), ['due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_case_partnership'), ['partnership'], unique=False)
        batch_op.create_index(batch_op.f('ix_case_status'), ['status'], unique=False)

    op.create_table('imap_cursor',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account', sa.String(length=255), nullable=False),
    sa.Column('folder', sa.String(length=255), nullable=False),
    sa.Column('uidvalidity', sa.Integer(), nullable=False),
    sa.Column('last_uid', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account', 'folder')
    )
    op.create_table('reference_counter',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('last', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('prefix', 'year')
    )
    op.create_table('inbound_message',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('idempotency_key', sa.String(length=512), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('account', sa.String(length=255), nullable=True),
    sa.Column('folder', sa.String(length=255), nullable=True),
    sa.Column('message_id', sa.String(length=998), nullable=True),
    sa.Column('envelope_sender', sa.String(length=998), nullable=True),
    sa.Column('envelope_recipients', sa.JSON(), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=True),
    sa.Column('partnership', sa.String(length=64), nullable=True),
    sa.Column('case_id', sa.Integer(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['case.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('fingerprint'),
    sa.UniqueConstraint('idempotency_key')
    )
    with op.batch_alter_table('inbound_message', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inbound_message_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbound_message_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbound_message_received_at'), ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbound_message_status'), ['status'], unique=False)

    op.create_table('outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dedupe_key', sa.String(length=512), nullable=False),
    sa.Column('message_id', sa.String(length=998), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=True),
    sa.Column('template', sa.String(length=128), nullable=False),
    sa.Column('sender', sa.String(length=320), nullable=False),
    sa.Column('recipients', sa.JSON(), nullable=False),
    sa.Column('subject', sa.String(length=998), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['case.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dedupe_key'),
    sa.UniqueConstraint('message_id')
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_next_attempt_at'), ['next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_status'), ['status'], unique=False)

    op.create_table('timer',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('fired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['case.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    with op.batch_alter_table('timer', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_timer_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_timer_due_at'), ['due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_timer_status'), ['status'], unique=False)

    op.create_table('case_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('actor', sa.String(length=320), nullable=True),
    sa.Column('inbound_id', sa.Integer(), nullable=True),
    sa.Column('clause', sa.String(length=255), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['case.id'], ),
    sa.ForeignKeyConstraint(['inbound_id'], ['inbound_message.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('case_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_event_case_id'), ['case_id'], unique=False)

    op.create_table('inbound_alias',
    sa.Column('idempotency_key', sa.String(length=512), nullable=False),
    sa.Column('inbound_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['inbound_id'], ['inbound_message.id'], ),
    sa.PrimaryKeyConstraint('idempotency_key')
    )
    with op.batch_alter_table('inbound_alias', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inbound_alias_inbound_id'), ['inbound_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('inbound_alias', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbound_alias_inbound_id'))

    op.drop_table('inbound_alias')
    with op.batch_alter_table('case_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_case_event_case_id'))

    op.drop_table('case_event')
    with op.batch_alter_table('timer', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_timer_status'))
        batch_op.drop_index(batch_op.f('ix_timer_due_at'))
        batch_op.drop_index(batch_op.f('ix_timer_case_id'))

    op.drop_table('timer')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_status'))
        batch_op.drop_index(batch_op.f('ix_outbox_next_attempt_at'))
        batch_op.drop_index(batch_op.f('ix_outbox_case_id'))

    op.drop_table('outbox')
    with op.batch_alter_table('inbound_message', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbound_message_status'))
        batch_op.drop_index(batch_op.f('ix_inbound_message_received_at'))
        batch_op.drop_index(batch_op.f('ix_inbound_message_message_id'))
        batch_op.drop_index(batch_op.f('ix_inbound_message_case_id'))

    op.drop_table('inbound_message')
    op.drop_table('reference_counter')
    op.drop_table('imap_cursor')
    with op.batch_alter_table('case', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_case_status'))
        batch_op.drop_index(batch_op.f('ix_case_partnership'))
        batch_op.drop_index(batch_op.f('ix_case_due_at'))

    op.drop_table('case')
