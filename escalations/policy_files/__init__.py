"""Reading ``config/`` (I/O): YAML with file:line marks (:mod:`.yamlfile`), loading (:mod:`.loader`)
and the checks beyond the schema (:mod:`.checks`).

The names below are imported from their modules when first used: importing this package (or
:mod:`.cache`) does not import the policy model or PyYAML.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from escalations.policy_files.loader import load_config
    from escalations.policy_files.yamlfile import ConfigError, ConfigIssue

__all__ = ["ConfigError", "ConfigIssue", "load_config"]


def __getattr__(name: str) -> Any:
    if name == "load_config":
        from escalations.policy_files.loader import load_config

        return load_config
    if name in ("ConfigError", "ConfigIssue"):
        from escalations.policy_files import yamlfile

        return getattr(yamlfile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
