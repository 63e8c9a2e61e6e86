from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

MAIL = Path(__file__).resolve().parent.parent / "fixtures" / "mail"
DEMO = Path(__file__).resolve().parent.parent.parent / "escalations" / "demo"
CONFIG = Path(__file__).resolve().parent.parent.parent / "config" / "partnerships"


def manifest() -> list[dict[str, Any]]:
    data = yaml.safe_load((MAIL / "MANIFEST.yaml").read_text(encoding="utf-8"))
    fixtures: list[dict[str, Any]] = data["fixtures"]
    return fixtures


def required_fields(partnership: str) -> list[str]:
    """The partnership's all_required_fields(), read the way the pipeline reads it."""
    from escalations.routing.policy.model import BASE_REQUIRED_FIELDS

    cfg = yaml.safe_load((CONFIG / f"{partnership}.yaml").read_text(encoding="utf-8"))
    extra = [f for f in cfg.get("required_fields") or [] if f not in BASE_REQUIRED_FIELDS]
    return [*BASE_REQUIRED_FIELDS, *extra]


def mailbox(partnership: str) -> str:
    cfg = yaml.safe_load((CONFIG / f"{partnership}.yaml").read_text(encoding="utf-8"))
    boxes: list[str] = cfg["mailboxes"]
    return boxes[0]


@pytest.fixture
def load_mail() -> Any:
    def load(name: str) -> bytes:
        return (MAIL / name).read_bytes()

    return load
