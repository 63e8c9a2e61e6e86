"""The sign-in examples administrators copy from the README and docs/operations.md are valid settings."""

from __future__ import annotations

import re

import pytest
import yaml

from escalations.settings import AuthMethod, MailboxSettings, Settings
from tests.conftest import REPO


def yaml_blocks(name: str) -> list[str]:
    text = (REPO / name).read_text(encoding="utf-8")
    return [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if "mailboxes:" in b]


@pytest.mark.parametrize("name", ["README.md", "docs/operations.md"])
def test_mailbox_examples_parse_and_hold_no_password(name: str) -> None:
    blocks = yaml_blocks(name)
    assert blocks
    methods = set()
    for block in blocks:
        for entry in yaml.safe_load(block)["mailboxes"]:
            assert "password" not in entry
            mailbox = MailboxSettings.model_validate(entry)
            methods.add(mailbox.auth.method)
    assert {AuthMethod.OAUTH2_M365, AuthMethod.OAUTH2_GOOGLE_SERVICE_ACCOUNT} <= methods


def test_relay_auth_from_nested_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"HOST": "smtp.office365.com", "USERNAME": "chscp@hackney.gov.uk",
                       "AUTH__METHOD": "oauth2_m365", "AUTH__TENANT_ID": "t", "AUTH__CLIENT_ID": "c",
                       "AUTH__CLIENT_SECRET_ENV": "ESCALATIONS_M365_SECRET"}.items():
        monkeypatch.setenv(f"ESCALATIONS_RELAY__{key}", value)
    relay = Settings().relay
    assert relay is not None and relay.auth.method is AuthMethod.OAUTH2_M365
    assert relay.auth.client_secret_env == "ESCALATIONS_M365_SECRET"
