"""The administrator's extra label wordings: ``<config dir>/labels.yaml``, merged over the vocabulary
shipped in ``escalations/parsers/labels.yaml`` (same format; a wording listed there wins over the
shipped one). Read here, beside the other configuration files, so the parsers stay free of I/O."""

from __future__ import annotations

import re
from pathlib import Path

from escalations.parsers.labels import LabelFileError, LabelTable, default_labels, label_table
from escalations.policy_files.yamlfile import ConfigError, ConfigIssue

__all__ = ["LABELS_FILE", "load_labels"]

#: Its name in the configuration directory.
LABELS_FILE = "labels.yaml"

_WHERE = re.compile(r"^(?P<file>.+?\.ya?ml)(?::(?P<line>\d+))?: (?:entry '(?P<entry>[^']*)': )?(?P<msg>.*)$", re.S)


def _issue(path: Path, exc: LabelFileError) -> ConfigIssue:
    m = _WHERE.match(str(exc))
    if m is None:
        return ConfigIssue(str(path), None, "labels", str(exc))
    line = int(m.group("line")) if m.group("line") else None
    return ConfigIssue(str(path), line, m.group("entry") or "labels", m.group("msg"))


def load_labels(config_dir: Path) -> LabelTable:
    """The vocabulary referrals are read with. Raises ConfigError naming the file and line."""
    path = config_dir / LABELS_FILE
    if not path.is_file():
        return default_labels()
    try:
        return label_table(path.read_text(encoding="utf-8"), str(path))
    except (LabelFileError, UnicodeDecodeError) as exc:
        issue = _issue(path, exc) if isinstance(exc, LabelFileError) else \
            ConfigIssue(str(path), None, "labels", "not UTF-8 text")
        raise ConfigError([issue]) from None
