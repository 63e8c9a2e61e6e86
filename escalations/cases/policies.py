"""Policy versions: each distinct partnership policy stored once, the cases opened under it refer to it.

A running case is evaluated against its own version, so a later YAML edit does not move its
deadlines. Versions never change once written, so both directions are cached in the process.
"""

from __future__ import annotations

import threading
from datetime import datetime

import structlog
from sqlmodel import Session, select

from escalations.cases.models import Case, PolicyVersion
from escalations.cases.prepared import dialect_insert
from escalations.routing.policy.model import Partnership, PolicyConfig

log = structlog.get_logger("escalations.policies")


class PolicyVersions:
    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._policies: dict[int, Partnership | None] = {}
        self._lock = threading.Lock()

    def id_for(self, s: Session, partnership: Partnership, now: datetime) -> int:
        """The stored version of ``partnership`` (written now in the caller's transaction if new)."""
        fp = partnership.policy_version
        known = self._ids.get(fp)
        if known is not None:
            return known
        found = s.exec(select(PolicyVersion.id).where(PolicyVersion.fingerprint == fp)).first()
        if found is not None:
            # committed by someone (this transaction has written nothing yet): safe to remember
            with self._lock:
                self._ids[fp] = found
            return found
        values = {"fingerprint": fp, "partnership": partnership.id,
                  "policy": partnership.model_dump(mode="json"), "created_at": now}
        insert = dialect_insert(s.get_bind().dialect.name)
        # another process may be writing the same version: its row, or ours, whichever is first
        s.exec(insert(PolicyVersion).values(**values).on_conflict_do_nothing(index_elements=["fingerprint"]))
        new_id = s.exec(select(PolicyVersion.id).where(PolicyVersion.fingerprint == fp)).one()
        # not remembered until a later look-up finds it committed: this transaction may roll back
        assert new_id is not None
        return new_id

    def policy_of(self, s: Session, case: Case, config: PolicyConfig) -> Partnership:
        """The policy the case was opened under, so YAML edits don't move running deadlines."""
        live = config.partnerships.get(case.partnership)
        if live is not None and case.policy_version and live.policy_version == case.policy_version:
            # The version fingerprints the whole effective policy: same version, same content, and no
            # need to load and re-validate the stored one (which checks every address).
            return live
        stored = self._stored(s, case.policy_version_id) if case.policy_version_id is not None else None
        return stored if stored is not None else config.partnerships[case.partnership]

    def _stored(self, s: Session, version_id: int) -> Partnership | None:
        if version_id in self._policies:
            return self._policies[version_id]
        policy = s.exec(select(PolicyVersion.policy).where(PolicyVersion.id == version_id)).first()
        result: Partnership | None = None
        if policy:
            try:
                result = Partnership.model_validate(policy)
            except Exception:  # an old version no longer valid under a newer schema
                log.warning("workflow.policy_version_invalid", policy_version_id=version_id)
        with self._lock:
            self._policies[version_id] = result
        return result
