"""Every fixture in the hostile-mail corpus parses and classifies as MANIFEST.yaml says."""

from __future__ import annotations

from typing import Any

import pytest

from escalations.parsers.auto_reply import detect_automated, must_not_answer
from escalations.parsers.message import MessageParseError, parse_message
from escalations.parsers.referral import extract_referral
from escalations.parsers.reply import find_reference, parse_reply
from tests.parsers.conftest import MAIL, mailbox, manifest, required_fields

FIXTURES = manifest()
IDS = [f["file"] for f in FIXTURES]


def test_manifest_lists_every_fixture() -> None:
    on_disk = {p.name for p in MAIL.glob("*.eml")}
    assert on_disk == set(IDS)
    kinds = {f["kind"] for f in FIXTURES}
    assert kinds == {"referral", "reply", "auto_reply", "bounce", "list", "not_email"}


def test_fixtures_are_small_and_use_placeholder_addresses() -> None:
    allowed_real = {"chscp@hackney.gov.uk", "safeguardingpartnerships@havering.gov.uk",
                    "lscbgcsx@wiltshire.gov.uk", "lscb@lbhf.gov.uk", "suttonlscp@sutton.gov.uk.cjsm.net"}
    for f in FIXTURES:
        raw = (MAIL / f["file"]).read_bytes()
        assert len(raw) < 200_000, f["file"]
        if f["kind"] == "not_email":
            continue
        msg = parse_message(raw)
        for address in (*msg.all_recipients, msg.from_address or "x@example.org"):
            domain = address.rsplit("@", 1)[-1]
            assert domain.endswith(("example.org", "example.net")) or address in allowed_real, (f["file"], address)


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_fixture_classification(fixture: dict[str, Any]) -> None:
    raw = (MAIL / fixture["file"]).read_bytes()
    kind = fixture["kind"]
    if kind == "not_email":
        with pytest.raises(MessageParseError):
            parse_message(raw)
        return
    msg = parse_message(raw)
    assert mailbox(fixture["partnership"]).lower() in msg.all_recipients
    info = detect_automated(msg)
    if kind in ("auto_reply", "bounce", "list"):
        assert info.kind == kind, info
        assert must_not_answer(msg) is not None
        if "failed_recipients" in fixture:
            assert list(info.failed_recipients) == fixture["failed_recipients"]
            assert info.permanent is fixture["permanent"]
        if "original_message_id" in fixture:
            assert info.original_message_id == fixture["original_message_id"]
        return
    assert info.kind == "none", info
    assert must_not_answer(msg) is None
    if kind == "reply":
        assert find_reference(msg.subject) == fixture["reference"]
        assert parse_reply(msg).command == fixture["command"]
        return
    assert kind == "referral"
    parse = extract_referral(msg, required_fields(fixture["partnership"]))
    assert list(parse.missing) == fixture["missing"], parse.fields
    assert parse.labelled_count >= 2
    fields = parse.fields.to_json()
    for name, expected in (fixture.get("expect") or {}).items():
        assert fields[name] == expected, (name, fields)
    if "subject" in fixture:
        assert msg.subject == fixture["subject"]
    if "from_name" in fixture:
        assert msg.from_name == fixture["from_name"]
