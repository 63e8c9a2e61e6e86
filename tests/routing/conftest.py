from __future__ import annotations

from pathlib import Path

import pytest

from escalations.routing.policy import PolicyConfig, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "config"
FIXTURES = REPO / "tests" / "fixtures" / "config"


@pytest.fixture(scope="session")
def shipped() -> PolicyConfig:
    return load_config(CONFIG_DIR)
