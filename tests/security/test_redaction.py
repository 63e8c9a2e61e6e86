"""No child's name, date of birth or ID leaves in a mail body or subject, however it was quoted — except
to recipients who are all on the partnership's configured secure route. The case record keeps the
original text.

Through the real processor: referrals and replies go in with ``App.ingest``, and every queued
outbox row is decoded and read as its recipient would read it.
"""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from escalations.app import App, build_app
from escalations.cases.models import OutboxMessage
from escalations.clock import FakeClock
from escalations.mailer.outbox import enqueue
from escalations.routing.redact import Redactor
from escalations.routing.workflow.state import OutgoingMail
from escalations.settings import Settings
from tests.conftest import CONFIG_DIR, AppFactory
from tests.workflow.conftest import reply
from tests.workflow.profiles import CH, SUTTON, Profile

CHILD = "Amara Testchild"
DOB = "14/03/2016"
NHS = "943 476 5919"
MOSAIC = "MOS-77001"
#: Every way the referral and the replies below write the child's details.
SECRETS = ("Amara", "Testchild", DOB, "14 March 2016", "2016-03-14", NHS, "9434765919", MOSAIC, "77001")
INITIALS_FOOTER = "Names are shown as initials; the full record is held by the partnership."
SECURE_FOOTER = "sent automatically by the partnership's secure route: it may contain personal details."


def referral(p: Profile, *, child_id: str = MOSAIC, other_email: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"{p.raiser_name} <{p.raiser}>"
    msg["To"] = p.mailbox
    msg["Subject"] = f"Escalation about {CHILD}"
    msg["Message-ID"] = f"<ref-{uuid.uuid4().hex[:12]}@example.org>"
    msg["Date"] = "Tue, 03 Nov 2026 09:55:00 +0000"
    msg.set_content("\n".join([
        f"Name of child(ren): {CHILD}",
        f"Date of birth: {DOB}",
        f"Mosaic ID no.: {child_id}",
        f"Name of referrer: {p.raiser_name}",
        f"Referrer's agency: {p.raising_agency}",
        f"Email: {p.raiser}",
        f"Other agency: {p.other_agency}",
        f"Other practitioner: {p.other_practitioner} <{other_email or p.other_practitioner_email}>",
        f"Brief description of nature of concern: Amara told her teacher that she is scared to go home. "
        f"Testchild's mother (DOB of child 14 March 2016, NHS number {NHS}) was not spoken to.",
        f"Action taken to resolve the issue: I rang about AMARA TESTCHILD ({MOSAIC}) twice; no call back "
        "about Amara's disclosure.",
        "Outcome sought: A strategy discussion for Amara (born 2016-03-14) and a child and family assessment.",
    ]) + "\n")
    return bytes(msg)


def parsed(row: OutboxMessage) -> EmailMessage:
    msg = email.message_from_bytes(row.raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def body(row: OutboxMessage) -> str:
    part = parsed(row).get_body(("plain",))
    assert part is not None
    text = part.get_content()
    assert isinstance(text, str)
    return text


def leaks(text: str, secrets: Iterable[str] = SECRETS) -> list[str]:
    return [s for s in secrets if re.search(rf"(?<![\w]){re.escape(s)}(?![\w])", text, re.I)]


def outbox(app: App, since: int = 0) -> list[OutboxMessage]:
    return [r for r in app.store.list_outbox() if (r.id or 0) > since]


def last_id(app: App) -> int:
    return max((r.id or 0 for r in app.store.list_outbox()), default=0)


def one(rows: list[OutboxMessage], template: str, to: str) -> OutboxMessage:
    found = [r for r in rows if r.template == template and to.lower() in [x.lower() for x in r.recipients]]
    assert len(found) == 1, [(r.template, r.recipients) for r in rows]
    return found[0]


def assert_redacted(rows: list[OutboxMessage]) -> None:
    assert rows
    for row in rows:
        text = body(row)
        assert leaks(text) == [], (row.template, leaks(text), text)
        assert INITIALS_FOOTER in text and SECURE_FOOTER not in text, row.template
        msg = parsed(row)
        for header in ("Subject", "To", "Cc", "From", "Reply-To"):
            assert leaks(str(msg.get(header, ""))) == [], header
        assert leaks(row.subject) == []


def test_no_child_details_leave_in_any_mail_and_the_record_keeps_them(make_app: AppFactory,
                                                                       clock: FakeClock) -> None:
    app = make_app(secret_key="redaction-tests-secret-key-0123456789")
    app.ingest(referral(CH))
    app.process_pending()
    rows = outbox(app)
    assert {r.template for r in rows} >= {"referral_acknowledged.txt.j2", "stage_request.txt.j2"}
    assert_redacted(rows)
    ack = body(one(rows, "referral_acknowledged.txt.j2", CH.raiser))
    assert "A.T. told her teacher" in ack and "A.T.'s mother" in ack
    assert "[date of birth removed]" in ack and "[ID removed]" in ack

    (case,) = app.store.list_cases()
    assert case.fields["child_names"] == [CHILD]
    assert "Amara told her teacher" in case.fields["concern"] and NHS in case.fields["concern"]
    assert "AMARA TESTCHILD" in case.fields["actions_taken"] and "2016-03-14" in case.fields["outcome_sought"]

    # A RESOLVED that quotes the child is relayed to the other side, and to both in the closing mail.
    request = parsed(one(rows, "stage_request.txt.j2", CH.raiser))
    mark = last_id(app)
    clock.advance(timedelta(hours=1))
    app.ingest(reply(request, CH.raiser, f"RESOLVED Amara Testchild's school will meet on Friday; Amara "
                                         f"(DOB {DOB}, NHS {NHS}) is safe tonight.", sender_name=CH.raiser_name))
    app.process_pending()
    rows = outbox(app, mark)
    confirm = one(rows, "resolution_confirm_request.txt.j2", CH.other_practitioner_email)
    assert "A.T.'s school will meet on Friday" in body(confirm)
    assert_redacted(rows)

    mark = last_id(app)
    clock.advance(timedelta(hours=1))
    app.ingest(reply(parsed(confirm), CH.other_practitioner_email, "ACCEPT Agreed; we will see Amara on Monday.",
                     style="gt"))
    app.process_pending()
    rows = outbox(app, mark)
    closing = [r for r in rows if r.template == "case_closed.txt.j2"]
    assert closing and all("A.T.'s school will meet on Friday" in body(r) for r in closing)
    assert_redacted(rows)
    assert_redacted(outbox(app))

    (case,) = app.store.list_cases()
    assert case.status == "closed"
    outcomes = [str(e.detail.get("outcome", "")) for e in app.store.case_events(case.id or 0)]
    assert any("Amara Testchild's school" in o and NHS in o for o in outcomes)


# ---- the secure route ----------------------------------------------------------------------------------

@pytest.fixture
def secure_app(tmp_path: Path, clock: FakeClock) -> Iterator[App]:
    """Sutton's shipped config, with its secure route widened to the placeholder domain example.org, as
    if every Sutton contact were on CJSM."""
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    yaml_path = config / "partnerships" / "sutton.yaml"
    text = yaml_path.read_text()
    assert "  domains: [cjsm.net]\n" in text
    yaml_path.write_text(text.replace("  domains: [cjsm.net]\n", "  domains: [cjsm.net, example.org]\n"))
    settings = Settings(data_dir=tmp_path / "var", config_dir=config,
                        database_url=f"sqlite:///{tmp_path / 'secure.sqlite3'}", smtp_listen_port=0,
                        secret_key="redaction-tests-secret-key-0123456789")
    app = build_app(settings, clock=clock)
    yield app
    app.store.engine.dispose()


def test_shipped_sutton_config_has_a_cjsm_secure_route(make_app: AppFactory) -> None:
    route = make_app().config.partnerships["sutton"].secure_route
    assert route is not None and route.domains == ["cjsm.net"] and "Appendix B" in route.clause
    assert route.covers(["suttonLSCP@sutton.gov.uk.cjsm.net"]) and not route.covers([SUTTON.raiser])


def test_mail_all_on_the_secure_route_carries_full_details(secure_app: App) -> None:
    secure_app.ingest(referral(SUTTON))
    secure_app.process_pending()
    rows = outbox(secure_app)
    assert {r.template for r in rows} >= {"referral_acknowledged.txt.j2", "stage_request.txt.j2"}
    for row in rows:
        text = body(row)
        assert SECURE_FOOTER in text and INITIALS_FOOTER not in text, row.template
        assert leaks(row.subject) == []
    ack = body(one(rows, "referral_acknowledged.txt.j2", SUTTON.raiser))
    assert "Amara told her teacher" in ack and "Testchild's mother" in ack and NHS in ack


def test_a_recipient_off_the_secure_route_gets_initials(secure_app: App) -> None:
    outsider = "robin.case@csc.example.net"
    secure_app.ingest(referral(SUTTON, other_email=outsider))
    secure_app.process_pending()
    rows = outbox(secure_app)
    assert_redacted([one(rows, "stage_request.txt.j2", outsider)])
    assert SECURE_FOOTER in body(one(rows, "stage_request.txt.j2", SUTTON.raiser))

    # One mail to a secure and an outside address at once: the outsider decides.
    (case,) = secure_app.store.list_cases()
    ack = one(rows, "referral_acknowledged.txt.j2", SUTTON.raiser)
    policy = secure_app.config.partnerships["sutton"]
    mixed = OutgoingMail(template=ack.template, to=(SUTTON.raiser,), cc=(outsider,), subject=ack.subject,
                         context={"reference": case.reference, "partnership_name": policy.name,
                                  "mailbox": policy.primary_mailbox, "child_initials": "A.T.", "child_count": 1,
                                  "other_agency": "", "other_practitioner": "",
                                  "concern_summary": case.fields["concern"], "outcome_sought": "",
                                  "immediate_risk": False, "missing": [], "raised_by_name": ""},
                         dedupe_key="mixed", reason="test")
    redactor = Redactor.for_case(case.fields["child_names"], case.fields["child_dobs"], case.fields["child_id"])
    with secure_app.store.session() as s:
        row = enqueue(s, mixed, renderer=secure_app.renderer, redactor=redactor, secure_route=policy.secure_route,
                      from_address=policy.primary_mailbox, from_name=policy.name, case_id=case.id,
                      now=secure_app.clock.now(), message_id_domain="escalations.invalid")
        assert row is not None
        assert_redacted([row])
