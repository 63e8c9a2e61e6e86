"""Partnership policies: the schema administrators write (:mod:`.model`), lookups in a
partnership's directory (:mod:`.directory`) and the plan engine (:mod:`.plan`). All pure.

Reading the YAML is :mod:`escalations.policy_files`; ``load_config``, ``ConfigError`` and
``ConfigIssue`` are still importable from here, resolved on first use so that this pure package
does not import the I/O one at import time (which imports this one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from escalations.routing.policy.directory import Recipient, Unresolved
from escalations.routing.policy.model import (
    AGENCY_ROLES,
    BASE_REQUIRED_FIELDS,
    CHILD_STATUSES,
    Agency,
    AgencyDirectory,
    Contact,
    Interpretation,
    Partnership,
    PolicyConfig,
    Resolution,
    Route,
    SecureRoute,
    Stage,
    Timescale,
)
from escalations.routing.policy.plan import IMMEDIATE, StagePlan, next_step, stage_plan, timeline

if TYPE_CHECKING:
    from escalations.policy_files import ConfigError, ConfigIssue, load_config

__all__ = [
    "AGENCY_ROLES", "BASE_REQUIRED_FIELDS", "CHILD_STATUSES", "IMMEDIATE", "Agency", "AgencyDirectory",
    "ConfigError", "ConfigIssue", "Contact", "Interpretation", "Partnership", "PolicyConfig", "Recipient", "Resolution",
    "Route", "SecureRoute", "Stage", "StagePlan", "Timescale", "Unresolved", "load_config", "next_step",
    "stage_plan", "timeline",
]

_FROM_POLICY_FILES = ("ConfigError", "ConfigIssue", "load_config")


def __getattr__(name: str) -> Any:
    if name in _FROM_POLICY_FILES:
        import escalations.policy_files as files

        return getattr(files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
