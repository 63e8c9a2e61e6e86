"""web interface: staff accounts, sessions, sign-in links, sign-in attempts, audit

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-01 13:44:10.498896
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('web_audit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('user_email', sa.String(length=320), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('case_ref', sa.String(length=32), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('route', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('web_audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_web_audit_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_web_audit_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_web_audit_case_ref'), ['case_ref'], unique=False)
        batch_op.create_index(batch_op.f('ix_web_audit_user_email'), ['user_email'], unique=False)

    op.create_table('web_login_attempt',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('ok', sa.Boolean(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('web_login_attempt', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_web_login_attempt_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_web_login_attempt_email'), ['email'], unique=False)
        batch_op.create_index(batch_op.f('ix_web_login_attempt_ip'), ['ip'], unique=False)

    op.create_table('web_sign_in_link',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('case_ref', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    with op.batch_alter_table('web_sign_in_link', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_web_sign_in_link_case_ref'), ['case_ref'], unique=False)

    op.create_table('web_user',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('partnerships', sa.JSON(), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=True),
    sa.Column('totp_secret', sa.String(length=255), nullable=True),
    sa.Column('totp_confirmed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('totp_last_step', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_sign_in_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('email')
    )
    op.create_table('web_session',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('partnerships', sa.JSON(), nullable=False),
    sa.Column('case_refs', sa.JSON(), nullable=False),
    sa.Column('method', sa.String(length=16), nullable=False),
    sa.Column('csrf', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['web_user.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('web_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_web_session_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_web_session_user_id'), ['user_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('web_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_session_user_id'))
        batch_op.drop_index(batch_op.f('ix_web_session_expires_at'))

    op.drop_table('web_session')
    op.drop_table('web_user')
    with op.batch_alter_table('web_sign_in_link', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_sign_in_link_case_ref'))

    op.drop_table('web_sign_in_link')
    with op.batch_alter_table('web_login_attempt', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_login_attempt_ip'))
        batch_op.drop_index(batch_op.f('ix_web_login_attempt_email'))
        batch_op.drop_index(batch_op.f('ix_web_login_attempt_at'))

    op.drop_table('web_login_attempt')
    with op.batch_alter_table('web_audit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_audit_user_email'))
        batch_op.drop_index(batch_op.f('ix_web_audit_case_ref'))
        batch_op.drop_index(batch_op.f('ix_web_audit_at'))
        batch_op.drop_index(batch_op.f('ix_web_audit_action'))

    op.drop_table('web_audit')
