"""The forms go out with the mails the policies name, attached only where every recipient is on the
partnership's secure route; elsewhere the mail says staff can download the form."""

from __future__ import annotations

import email
import io
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import docx
import pytest
from sqlmodel import select

from escalations.app import App, build_app
from escalations.cases.models import OutboxMessage
from escalations.clock import FakeClock
from escalations.policy_files import load_config
from escalations.records.models import FormCopy
from escalations.routing.policy.model import PolicyConfig, SecureRoute
from escalations.settings import Settings
from tests.conftest import CONFIG_DIR
from tests.records.conftest import BY_ID, CHILD, close, open_case, party, say

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def secure_config() -> PolicyConfig:
    """The shipped configuration, with every partnership's placeholder domain on a secure route."""
    config = load_config(CONFIG_DIR)
    route = SecureRoute(domains=["example.org", "example.net"], clause="test: a relay enforcing TLS")
    config.partnerships = {k: p.model_copy(update={"secure_route": route}) for k, p in config.partnerships.items()}
    return config


@pytest.fixture
def secure_app(tmp_path: Path, clock: FakeClock) -> Iterator[App]:
    settings = Settings(data_dir=tmp_path / "svar", config_dir=CONFIG_DIR, smtp_listen_port=0,
                        database_url=f"sqlite:///{tmp_path / 'secure.sqlite3'}")
    application = build_app(settings, clock=clock, config=secure_config())
    yield application
    application.close()
    application.store.engine.dispose()


def mails(app: App, reference: str, template: str) -> list[EmailMessage]:
    case = app.store.case_by_reference(reference)
    assert case is not None
    return [email.message_from_bytes(o.raw, policy=default)  # type: ignore[misc]
            for o in app.store.list_outbox() if o.case_id == case.id and o.template == template]


def attachments(m: EmailMessage) -> list[tuple[str, bytes]]:
    return [(str(part.get_filename()), part.get_content()) for part in m.iter_attachments()]


def text_of(m: EmailMessage) -> str:
    body = m.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def escalate_to(app: App, reference: str, stage_id: str) -> None:
    p = app.config.partnerships[app.store.case_by_reference(reference).partnership]  # type: ignore[union-attr]
    ids = [s.id for s in p.default_route.stages]
    for _ in range(len(ids)):
        case = app.store.case_by_reference(reference)
        assert case is not None
        if ids[case.stage_index or 0] == stage_id:
            return
        say(app, reference, party(app, reference, "raising")["email"], "ESCALATE", "not resolved")
    raise AssertionError(f"never reached {stage_id}")


def test_sutton_form_goes_with_the_referral_to_the_chair_on_a_secure_route(secure_app: App) -> None:
    ref = open_case(secure_app, BY_ID["sutton"])
    assert not any(attachments(m) for m in mails(secure_app, ref, "stage_request.txt.j2"))  # not before the Chair
    escalate_to(secure_app, ref, "independent-chair")
    chair = secure_app.config.partnerships["sutton"].roles["independent_chair"].contacts[0].email
    to_chair = [m for m in mails(secure_app, ref, "stage_request.txt.j2") if chair in str(m["To"])]
    assert len(to_chair) == 1
    files = attachments(to_chair[0])
    assert [name for name, _ in files] == [f"{ref}-sutton-referral.docx"]
    document = docx.Document(io.BytesIO(files[0][1]))
    assert document.tables[0].rows[0].cells[1].text == "MOS-123456"
    assert [c.text for c in document.tables[1].rows[1].cells] == [CHILD, "2 March 2015"]
    assert "Attached: LSCP Escalation Referral Form (Appendix B) (Sutton 7.4; Appendix B)" in text_of(to_chair[0])
    with secure_app.store.reading() as s:
        copies = list(s.exec(select(FormCopy)).all())
    assert [(c.form, c.case_id) for c in copies] == [("sutton-referral", copies[0].case_id)]
    assert CHILD not in str(to_chair[0]["Subject"])


def test_sutton_form_is_offered_not_attached_off_the_secure_route(app: App) -> None:
    ref = open_case(app, BY_ID["sutton"])
    escalate_to(app, ref, "independent-chair")
    chair = app.config.partnerships["sutton"].roles["independent_chair"].contacts[0].email
    to_chair = [m for m in mails(app, ref, "stage_request.txt.j2") if chair in str(m["To"])]
    assert len(to_chair) == 1 and attachments(to_chair[0]) == []
    body = text_of(to_chair[0])
    assert "LSCP Escalation Referral Form (Appendix B) (Sutton 7.4; Appendix B): ready for partnership staff to " \
           "download" in body
    assert f"escalations cases export {ref} --format docx" in body
    assert CHILD not in body  # redacted as ever
    with app.store.reading() as s:
        assert list(s.exec(select(FormCopy)).all()) == []


def test_tri_borough_form_from_the_line_manager_stage_and_a_copy_to_the_lscb_team(app: App) -> None:
    ref = open_case(app, BY_ID["tri-borough"])
    first = mails(app, ref, "stage_request.txt.j2")
    assert first and not any("Monitoring Form" in text_of(m) for m in first)  # practitioners' stage: no form
    say(app, ref, party(app, ref, "raising")["email"], "ESCALATE", "no answer")
    second = [m for m in mails(app, ref, "stage_request.txt.j2") if m not in first]
    managers = [m for m in second if "line-manager" in str(m["To"])]
    assert len(managers) == 2
    for m in managers:
        assert "Tri-borough LSCB Escalation Protocol Monitoring Form (Tri-borough Appendix A): ready for " \
               "partnership staff to download" in text_of(m)
        assert attachments(m) == []
    close(app, ref, "Joint visit agreed.")
    copies = mails(app, ref, "forms/form_copy.txt.j2")
    team = app.config.partnerships["tri-borough"].roles["lscb_team"].contacts
    assert sorted(str(m["To"]) for m in copies) == sorted(c.email for c in team)
    assert "Please send a copy to the LSCB Team on completion" in text_of(copies[0])
    assert str(copies[0]["Subject"]) == f"[{ref}] Escalation resolved: form for the partnership"


def test_tri_borough_copy_to_the_lscb_team_is_attached_on_a_secure_route(secure_app: App) -> None:
    ref = open_case(secure_app, BY_ID["tri-borough"])
    say(secure_app, ref, party(secure_app, ref, "raising")["email"], "ESCALATE", "no answer")
    close(secure_app, ref, "Joint visit agreed.")
    copies = mails(secure_app, ref, "forms/form_copy.txt.j2")
    assert copies and all(attachments(m)[0][0] == f"{ref}-tri-borough-monitoring.docx" for m in copies)
    document = docx.Document(io.BytesIO(attachments(copies[0])[0][1]))
    assert document.tables[0].rows[0].cells[1].text == CHILD
    assert "Agreed outcome: Joint visit agreed." in document.tables[0].rows[2].cells[1].text


def test_wiltshire_notification_goes_to_the_resolving_manager_only(secure_app: App) -> None:
    ref = open_case(secure_app, BY_ID["wiltshire"])
    resolver = party(secure_app, ref, "raising")["email"]
    close(secure_app, ref, "Strategy meeting held.")
    closed = mails(secure_app, ref, "case_closed.txt.j2")
    assert len(closed) >= 2
    with_form = [m for m in closed if attachments(m)]
    assert [str(m["To"]) for m in with_form] == [resolver]
    assert attachments(with_form[0])[0][0] == f"{ref}-wiltshire-notification.docx"
    assert "forwarded to the WSCB mailbox" in text_of(with_form[0])


def test_outbox_rows_with_forms_are_sent_whole(secure_app: App) -> None:
    """The attachment is part of the stored message: a retry sends the same bytes."""
    ref = open_case(secure_app, BY_ID["wiltshire"])
    close(secure_app, ref, "Strategy meeting held.")
    with secure_app.store.reading() as s:
        rows = [o for o in s.exec(select(OutboxMessage)).all() if b"wiltshire-notification.docx" in o.raw]
    assert len(rows) == 1
    parsed = email.message_from_bytes(rows[0].raw, policy=default)
    assert parsed.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in parsed.iter_attachments()] == [DOCX]  # type: ignore[attr-defined]


def test_no_monitoring_form_copy_for_a_case_resolved_between_practitioners(app: App) -> None:
    """Tri-borough Appendix A: the form is used from the escalation to the manager on."""
    ref = open_case(app, BY_ID["tri-borough"])
    close(app, ref, "Agreed between us.")
    assert app.store.case_by_reference(ref).status == "closed"  # type: ignore[union-attr]
    assert mails(app, ref, "forms/form_copy.txt.j2") == []
