"""The bundled demo referrals: one per partnership, complete, addressed to its mailbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from escalations.parsers.auto_reply import detect_automated, must_not_answer
from escalations.parsers.message import parse_message
from escalations.parsers.referral import extract_referral
from tests.parsers.conftest import CONFIG, DEMO, mailbox, required_fields

PARTNERSHIPS = sorted(p.stem for p in CONFIG.glob("*.yaml"))


def test_one_demo_per_partnership() -> None:
    assert sorted(p.stem for p in DEMO.glob("*.eml")) == PARTNERSHIPS


@pytest.mark.parametrize("pid", PARTNERSHIPS)
def test_demo_is_a_complete_referral(pid: str) -> None:
    raw = (DEMO / f"{pid}.eml").read_bytes()
    assert len(raw) < 200_000
    msg = parse_message(raw)
    assert mailbox(pid).lower() in msg.to
    assert msg.from_address is not None and msg.from_address.endswith("@example.org")
    assert detect_automated(msg).kind == "none" and must_not_answer(msg) is None
    parse = extract_referral(msg, required_fields(pid))
    assert parse.missing == ()
    f = parse.fields
    for name in ("child_names", "child_dobs", "raised_by_name", "raised_by_agency", "raised_by_email",
                 "other_agency", "concern", "outcome_sought"):
        assert not f.is_empty(name), (pid, name)
    if pid == "sutton":
        assert f.child_id and f.child_dobs
    if pid == "tri-borough":
        assert f.borough == "Westminster"


def test_demo_forms_vary() -> None:
    sources = {pid: extract_referral(parse_message((DEMO / f"{pid}.eml").read_bytes()), []).sources
               for pid in PARTNERSHIPS}
    assert sources["tri-borough"] == ("docx",)
    assert sources["wiltshire"] == ("forwarded",)
    assert parse_message((DEMO / "havering.eml").read_bytes()).html is not None
    assert all(isinstance(Path(DEMO / f"{pid}.eml"), Path) for pid in PARTNERSHIPS)
