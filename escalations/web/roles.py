"""The roles of the web interface (issue: viewer reads, coordinator acts, admin manages)."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"  # partnership staff: read
    COORDINATOR = "coordinator"  # act on cases
    ADMIN = "admin"  # users, audit, config (and everything a coordinator does)
    PRACTITIONER = "practitioner"  # named on a case: that case only, through a mailed sign-in link

    @property
    def rank(self) -> int:
        """Staff roles in order of what they may do; a practitioner is outside the order."""
        return {Role.PRACTITIONER: 0, Role.VIEWER: 1, Role.COORDINATOR: 2, Role.ADMIN: 3}[self]

    @property
    def label(self) -> str:
        return self.value.capitalize()


#: The roles that see every case of their partnerships.
STAFF = (Role.VIEWER, Role.COORDINATOR, Role.ADMIN)
