"""Reading ``config/`` (I/O): YAML with file:line marks (:mod:`.yamlfile`), loading (:mod:`.loader`)
and the checks beyond the schema (:mod:`.checks`)."""

from escalations.policy_files.loader import load_config
from escalations.policy_files.yamlfile import ConfigError, ConfigIssue

__all__ = ["ConfigError", "ConfigIssue", "load_config"]
