"""Policy versions stored once: a case refers to the policy it was opened under instead of carrying
its own copy; the timers' due query gets its (status, due_at) index, which replaces ix_timer_status.

Every case's ``policy_snapshot`` becomes a ``policy_version`` row, one per distinct fingerprint
(the case's ``policy_version``, or for a case without one a hash of its snapshot), and the column
goes. Downgrading copies each version back into its cases.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_case = sa.table(
    "case",
    sa.column("id", sa.Integer()),
    sa.column("partnership", sa.String()),
    sa.column("policy_version", sa.String()),
    sa.column("policy_snapshot", sa.JSON()),
    sa.column("policy_version_id", sa.Integer()),
    sa.column("opened_at", sa.DateTime(timezone=True)),
)
_version = sa.table(
    "policy_version",
    sa.column("id", sa.Integer()),
    sa.column("fingerprint", sa.String()),
    sa.column("partnership", sa.String()),
    sa.column("policy", sa.JSON()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    op.create_table(
        "policy_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=128), nullable=False),
        sa.Column("partnership", sa.String(length=64), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint"),
    )
    op.create_index(op.f("ix_policy_version_partnership"), "policy_version", ["partnership"], unique=False)
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        # Plain ALTERs, not a batch copy of the table: recreating "case" would drop a table other
        # tables' rows refer to, which SQLite's foreign keys refuse inside the migration's transaction.
        op.execute('ALTER TABLE "case" ADD COLUMN policy_version_id INTEGER REFERENCES policy_version (id)')
    else:
        op.add_column("case", sa.Column("policy_version_id", sa.Integer(), nullable=True))
        op.create_foreign_key(None, "case", "policy_version", ["policy_version_id"], ["id"])
    op.create_index(op.f("ix_case_policy_version_id"), "case", ["policy_version_id"], unique=False)
    _snapshots_to_versions(op.get_bind())
    if sqlite:
        op.execute('ALTER TABLE "case" DROP COLUMN policy_snapshot')
    else:
        op.drop_column("case", "policy_snapshot")
    op.create_index("ix_timer_status_due_at", "timer", ["status", "due_at"], unique=False)
    op.drop_index("ix_timer_status", table_name="timer")  # the new index's first column


def _snapshots_to_versions(conn: sa.Connection) -> None:
    """One version per fingerprint: a case of each fingerprint gives the snapshot, and all its cases
    are pointed at it in one statement; cases without a fingerprint are hashed one by one."""
    known: dict[str, int] = {}
    firsts = conn.execute(sa.select(sa.func.min(_case.c.id)).where(_case.c.policy_version.is_not(None))
                          .group_by(_case.c.policy_version)).scalars().all()
    for case_id in firsts:
        row = conn.execute(sa.select(_case).where(_case.c.id == case_id)).one()
        if row.policy_snapshot:
            version_id = _version_for(conn, known, row.policy_version, row)
            conn.execute(sa.update(_case).where(_case.c.policy_version == row.policy_version)
                         .values(policy_version_id=version_id))
    unversioned = conn.execute(sa.select(_case.c.id).where(_case.c.policy_version.is_(None))).scalars().all()
    for case_id in unversioned:
        row = conn.execute(sa.select(_case).where(_case.c.id == case_id)).one()
        if row.policy_snapshot:
            digest = hashlib.sha256(json.dumps(row.policy_snapshot, sort_keys=True).encode()).hexdigest()
            version_id = _version_for(conn, known, f"snapshot+{digest[:40]}", row)
            conn.execute(sa.update(_case).where(_case.c.id == case_id).values(policy_version_id=version_id))


def _version_for(conn: sa.Connection, known: dict[str, int], fingerprint: str, row: Any) -> int:
    if fingerprint not in known:
        conn.execute(sa.insert(_version).values(fingerprint=fingerprint, partnership=row.partnership,
                                                policy=row.policy_snapshot, created_at=row.opened_at))
        known[fingerprint] = conn.execute(sa.select(_version.c.id)
                                          .where(_version.c.fingerprint == fingerprint)).scalar_one()
    return known[fingerprint]


def downgrade() -> None:
    op.create_index("ix_timer_status", "timer", ["status"], unique=False)
    op.drop_index("ix_timer_status_due_at", table_name="timer")
    # plain ALTERs on SQLite too (see upgrade); its DROP COLUMN takes a column-level REFERENCES with it
    op.add_column("case", sa.Column("policy_snapshot", sa.JSON(), server_default="{}", nullable=False))
    conn = op.get_bind()
    for version_id, policy in conn.execute(sa.select(_version.c.id, _version.c.policy)).all():
        conn.execute(sa.update(_case).where(_case.c.policy_version_id == version_id)
                     .values(policy_snapshot=policy))
    op.drop_index(op.f("ix_case_policy_version_id"), table_name="case")
    if conn.dialect.name == "sqlite":
        op.execute('ALTER TABLE "case" DROP COLUMN policy_version_id')
    else:
        op.drop_column("case", "policy_version_id")
    op.drop_index(op.f("ix_policy_version_partnership"), table_name="policy_version")
    op.drop_table("policy_version")
