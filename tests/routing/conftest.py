from __future__ import annotations

from pathlib import Path

import pytest

from escalations.policy_files import load_config
from escalations.routing.policy.model import PolicyConfig

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "config"
FIXTURES = REPO / "tests" / "fixtures" / "config"


@pytest.fixture(scope="session")
def shipped() -> PolicyConfig:
    return load_config(CONFIG_DIR)
