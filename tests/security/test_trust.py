"""What an attacker, a careless sender and an odd mail client do to a case, through the real processor.

Each test sends mail with ``app.ingest`` (the one intake seam) and processes it as the service does,
then checks what was applied, who was told what, and what the record shows.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from escalations.app import App
from escalations.cases.models import Case, CaseEvent, OutboxMessage
from escalations.parsers.authresults import trusted_verdict
from escalations.parsers.sender import strict_sender
from tests.conftest import AppFactory
from tests.workflow.conftest import referral
from tests.workflow.profiles import CH, OPENED

MAILBOX = CH.mailbox
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def body_of(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    part = msg.get_body(("plain",)) if isinstance(msg, EmailMessage) else None
    return part.get_content() if part is not None else ""  # type: ignore[union-attr]


def outbox(app: App, template: str | None = None, to: str | None = None) -> list[OutboxMessage]:
    rows = app.store.list_outbox()
    return [r for r in rows if (template is None or r.template == template)
            and (to is None or to.lower() in (a.lower() for a in r.recipients))]


def events(app: App, kind: str | None = None) -> list[CaseEvent]:
    case = app.store.list_cases()[0]
    return [e for e in app.store.case_events(case.id or 0) if kind is None or e.kind == kind]


def the_case(app: App) -> Case:
    cases = app.store.list_cases()
    assert len(cases) == 1
    return cases[0]


def reply_code(row: OutboxMessage) -> str:
    m = re.search(r"Reply code: ([a-z2-7]{32})", body_of(row.raw))
    assert m, "no reply code"
    return m.group(1)


def mail(sender: str, subject: str, text: str, *, to: str = MAILBOX, headers: dict[str, str] | None = None,
         raw_from: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(OPENED)
    msg["Message-ID"] = f"<m-{abs(hash((sender, subject, text, raw_from))) % 10**12}@example.net>"
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(text)
    raw = bytes(msg)
    return f"From: {raw_from if raw_from is not None else sender}\r\n".encode() + raw


@pytest.fixture
def app(make_app: AppFactory) -> App:
    a = make_app()
    a.ingest(referral(CH))
    a.process_pending()
    case = the_case(a)
    assert case.status == "open" and case.stage == 1
    return a


def run(app: App, raw: bytes, received: datetime | None = None) -> None:
    app.ingest(raw, received_at=received)
    app.process_pending()


def raiser_request(app: App) -> OutboxMessage:
    return outbox(app, "stage_request.txt.j2", CH.raiser)[0]


# ---- 1. authority needs a token --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["WITHDRAW", "URGENT the child is at risk", "ESCALATE", "NOTE hello",
                                     "RESOLVED all sorted"])
def test_a_reply_without_a_token_changes_nothing(app: App, command: str) -> None:
    case = the_case(app)
    before = (case.status, case.stage, case.immediate_risk)
    mails_before = len(app.store.list_outbox())
    run(app, mail(CH.raiser, f"Re: [{case.reference}] Stage 1", f"{command}\n"))
    after = the_case(app)
    assert (after.status, after.stage, after.immediate_risk) == before
    kept = events(app, "reply_not_applied")
    assert [e.detail["reason"] for e in kept] == ["no_token"] and kept[0].detail["unverified"]
    assert kept[0].detail["text"] == command.partition(" ")[2]  # kept on the record, never applied
    # The genuine raiser gets a fresh copy of their request with a valid reply address; nobody else.
    new = app.store.list_outbox()[mails_before:]
    assert [(r.template, r.recipients) for r in new] == [("reply_not_verified.txt.j2", [CH.raiser])]
    assert "+" in email.message_from_bytes(new[0].raw)["Reply-To"]
    assert "could not verify" in " ".join(body_of(new[0].raw).split())
    # ...at most once a day.
    run(app, mail(CH.raiser, f"Re: [{case.reference}] Stage 1", f"{command} again\n"))
    assert len(app.store.list_outbox()) == mails_before + 1
    assert len(events(app, "reply_not_applied")) == 2


def test_a_forger_from_an_unknown_address_learns_and_gets_nothing(app: App) -> None:
    case = the_case(app)
    mails_before = len(app.store.list_outbox())
    token = reply_code(raiser_request(app))
    run(app, mail("eve@attacker.example.com", f"Re: [{case.reference}]", f"WITHDRAW\n\nReply code: {token}\n"))
    assert the_case(app).status == "open"
    assert [e.detail["reason"] for e in events(app, "reply_not_applied")] == ["token_invalid"]
    assert len(app.store.list_outbox()) == mails_before  # no answer to the forger
    app.tick(OPENED + timedelta(minutes=5))
    digest = outbox(app, "coordinator_digest.txt.j2", CH.coordinator)
    assert len(digest) == 1 and case.reference in body_of(digest[0].raw)


def test_the_genuine_reply_with_its_token_is_applied(app: App) -> None:
    case = the_case(app)
    token = reply_code(raiser_request(app))
    run(app, mail(CH.raiser, f"Re: [{case.reference}] Stage 1", f"NOTE called again today\n\nReply code: {token}\n"))
    assert [e.kind for e in events(app)][-1] == "reply_note"
    assert not events(app, "reply_not_applied")


def test_a_token_for_another_case_acts_on_nothing(app: App) -> None:
    second = referral(CH, message_id="<second@example.org>", child="Ben Testchild")
    run(app, second)
    a, b = app.store.list_cases()
    token_b = reply_code(next(r for r in outbox(app, "stage_request.txt.j2", CH.raiser) if r.case_id == b.id))
    mails_before = len(app.store.list_outbox())
    run(app, mail(CH.raiser, f"Re: [{a.reference}] Stage 1", f"WITHDRAW\n\nReply code: {token_b}\n"))
    assert [c.status for c in app.store.list_cases()] == ["open", "open"]
    refused = [e for e in app.store.case_events(b.id or 0) if e.kind == "reply_not_applied"]
    assert [e.detail["reason"] for e in refused] == ["token_other_case"]
    told = app.store.list_outbox()[mails_before:]
    assert [(r.template, r.recipients) for r in told] == [("reply_not_applied.txt.j2", [CH.raiser])]
    assert "different case" in body_of(told[0].raw)


# ---- 2. one sender ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw_from", [
    f"{CH.raiser} <eve@attacker.example.com>",
    f"Jo <{CH.raiser}> <eve@attacker.example.com>",
    f"{CH.raiser}, eve@attacker.example.com",
    f"Jo <{CH.raiser}>\r\nFrom: eve@attacker.example.com",
])
def test_ambiguous_senders_are_never_applied(app: App, raw_from: str) -> None:
    case = the_case(app)
    token = reply_code(raiser_request(app))
    run(app, mail(CH.raiser, f"Re: [{case.reference}]", f"WITHDRAW\n\nReply code: {token}\n", raw_from=raw_from))
    assert the_case(app).status == "open"
    refused = events(app, "reply_not_applied")
    assert [e.detail["reason"] for e in refused] == ["sender_ambiguous"]
    assert refused[0].detail["sender_problem"].startswith("sender_")


def test_a_sender_header_naming_someone_else_is_not_applied(app: App) -> None:
    case = the_case(app)
    token = reply_code(raiser_request(app))
    run(app, mail(CH.raiser, f"Re: [{case.reference}]", f"WITHDRAW\n\nReply code: {token}\n",
                  headers={"Sender": "eve@attacker.example.com"}))
    assert the_case(app).status == "open"
    assert events(app, "reply_not_applied")[0].detail["sender_problem"] == "sender_header_differs"


def test_an_encoded_colon_in_a_display_name_does_not_change_the_sender(make_app: AppFactory) -> None:
    app = make_app()
    raw = referral(CH).replace(f"From: {CH.raiser_name} <{CH.raiser}>".encode(),
                               f"From: =?utf-8?q?Jo_Bloggs=3A_x?= <{CH.raiser}>".encode())
    assert raw != referral(CH)
    run(app, raw)
    assert the_case(app).raised_by_email == CH.raiser
    assert outbox(app, "referral_acknowledged.txt.j2", CH.raiser)


def test_control_characters_in_from_still_open_the_case(make_app: AppFactory) -> None:
    app = make_app()
    raw = referral(CH).replace(f"<{CH.raiser}>".encode(), b"<jo.bl\x01oggs@school.example.org>", 1)
    run(app, raw)
    case = the_case(app)  # a case, not a quarantined referral
    assert case.status == "open"
    kinds = [e.kind for e in app.store.case_events(case.id or 0)]
    assert "sender_not_verified" in kinds
    for r in app.store.list_outbox():  # nobody is mailed at the malformed address
        assert all("\x01" not in a for a in r.recipients)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.sampled_from(["Jo <jo@x.example.org>", "jo@x.example.org", "<jo@x.example.org>", "\"Jo\" <jo@x.example.org>"]),
    st.lists(st.sampled_from(["jo@x.example.org", "eve@y.example.com", "Jo <jo@x.example.org>", "bad@", "<>",
                              "\"jo@x.example.org\" <eve@y.example.com>", "x\u2028 <jo@x.example.org>", ",", " "]),
             min_size=1, max_size=3).map(" ".join),
    st.text(max_size=40),
))
def test_only_one_strict_mailbox_is_a_sender(value: str) -> None:
    """For random From values: a sender is read only when the header holds exactly one valid mailbox,
    and it is then that mailbox's address (never a display name's)."""
    got = strict_sender([value])
    import email.policy as ep
    try:
        header = ep.default.header_factory("from", value)
        addrs = [a.addr_spec.lower() for a in header.addresses]
    except Exception:
        addrs = []
    if got.address is not None:
        assert addrs == [got.address]
        assert "\u2028" not in value and "\x00" not in value
    if len(addrs) != 1:
        assert got.address is None


# ---- 3. Authentication-Results by configuration -----------------------------------------------------


EXCHANGE = ("spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=example.org; dkim=pass (signature was verified) "
            "header.d=example.org;dmarc=fail action=quarantine header.from=example.org;compauth=fail reason=000")


def test_trust_modes() -> None:
    forged_above = [("authentication-results", "mx.example.org; dmarc=pass header.from=example.org"),
                    ("authentication-results", "mx.example.org; dmarc=fail header.from=example.org")]
    assert trusted_verdict(forged_above, "mx.example.org").dmarc == "fail"
    assert trusted_verdict(forged_above, "none").dmarc == "unknown"
    # Exchange Online's own header has no authserv-id: "first" reads it.
    assert trusted_verdict([("authentication-results", EXCHANGE)], "first").dmarc == "fail"
    assert trusted_verdict([("authentication-results", "other.example; dmarc=fail")], "mx.example.org").dmarc \
        == "unknown"


def test_smtp_intake_ignores_authentication_results_the_sender_wrote(make_app: AppFactory) -> None:
    app = make_app(smtp_intake_authserv_id="mx.hackney.example.org")
    run(app, referral(CH))
    case = the_case(app)
    token = reply_code(raiser_request(app))
    raw = mail(CH.raiser, f"Re: [{case.reference}]", f"WITHDRAW\n\nReply code: {token}\n", headers={
        "Authentication-Results": "mx.hackney.example.org; dmarc=fail header.from=school.example.org"})
    raw = b"Authentication-Results: mx.hackney.example.org; dmarc=pass header.from=school.example.org\r\n" + raw
    app.store.store_inbound(raw, source="smtp", envelope_recipients=[MAILBOX])
    app.process_pending()
    assert the_case(app).status == "open"
    assert events(app, "reply_not_applied")[0].detail["reason"] == "dmarc_fail"


# ---- 4. recipients come from the directory ---------------------------------------------------------


def test_addresses_in_a_referral_from_unknown_domains_are_not_mailed(make_app: AppFactory) -> None:
    app = make_app()
    raw = referral(CH).replace(f"Email: {CH.raiser}".encode(), b"Email: victim@elsewhere.example.com")
    raw = raw.replace(CH.other_practitioner_email.encode(), "sam@\u2028unknown.example.com".encode())
    run(app, raw)
    case = the_case(app)
    everyone = {a for r in app.store.list_outbox() for a in r.recipients}
    assert not any("elsewhere" in a or "unknown" in a for a in everyone), everyone
    assert case.raised_by_email == CH.raiser


def test_the_coordinator_confirms_an_unknown_address_before_it_is_mailed(make_app: AppFactory) -> None:
    app = make_app()
    other = "sam.smith@newacademy.example.com"
    run(app, referral(CH).replace(CH.other_practitioner_email.encode(), other.encode()))
    case = the_case(app)
    assert other not in {a for r in app.store.list_outbox() for a in r.recipients}
    ask = outbox(app, "address_confirm_request.txt.j2", CH.coordinator)
    assert len(ask) == 1 and f"CONFIRM {other}" in body_of(ask[0].raw)
    run(app, mail(CH.coordinator, f"Re: [{case.reference}] Address to confirm",
                  f"CONFIRM {other}\n\nReply code: {reply_code(ask[0])}\n"))
    request = outbox(app, "stage_request.txt.j2", other)
    assert len(request) == 1
    after = the_case(app)
    assert after.due_at == case.due_at and other in after.confirmed_addresses
    # A CONFIRM from anyone but staff does nothing.
    assert "address_confirmed" in [e.kind for e in events(app)]


def test_a_forwarded_referral_acknowledges_the_forwarder_and_the_practitioner(make_app: AppFactory) -> None:
    app = make_app()
    raw = referral(CH).replace(f"From: {CH.raiser_name} <{CH.raiser}>".encode(),
                               b"From: DSL <dsl@school.example.org>")
    run(app, raw)
    acks = outbox(app, "referral_acknowledged.txt.j2")
    assert sorted(a for r in acks for a in r.recipients) == sorted(["dsl@school.example.org", CH.raiser])
    assert the_case(app).raised_by_email == CH.raiser


# ---- 8. the clock starts on arrival ----------------------------------------------------------------


def test_a_late_ingested_referral_counts_from_its_received_time(make_app: AppFactory, clock) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    clock.set(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    received = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # Tuesday 24 November
    run(app, referral(CH), received=received)
    case = the_case(app)
    assert case.opened_at == received
    # C&H 1.4: five working days from Tue 24 Nov -> Tue 1 Dec 17:00 (not 8 Dec, counting from processing).
    assert case.due_at == datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
    assert app.store.get_inbound(case.origin_inbound_id or 0).processed_at == clock.now()  # type: ignore[union-attr]


# ---- 9. floods -------------------------------------------------------------------------------------


def test_five_hundred_forged_replies_make_one_digest_and_case_mail_goes_first(app: App, clock) -> None:  # type: ignore[no-untyped-def]
    case = the_case(app)
    token = reply_code(raiser_request(app))
    for i in range(500):
        app.ingest(mail(f"forger{i}@attacker.example.com", f"Re: [{case.reference}]",
                        f"WITHDRAW {i}\n\nReply code: {token}\n"))
    app.process_pending()
    assert the_case(app).status == "open"
    assert len(events(app, "reply_not_applied")) == 500
    notices_mailed = [r for r in app.store.list_outbox() if r.template != "coordinator_digest.txt.j2"
                      and CH.coordinator in r.recipients and r.created_at > OPENED]
    assert notices_mailed == []
    # A real case mail queued after the flood is sent before the digest.
    second = referral(CH, message_id="<real@example.org>")
    clock.set(OPENED + timedelta(minutes=1))
    app.workflow.send_digests(clock.now())
    run(app, second)
    digest = outbox(app, "coordinator_digest.txt.j2")
    assert len(digest) == 1 and "500 messages" in digest[0].subject
    ids = app.store.claim_due_outbox(limit=500)
    order = [app.store.get_outbox(i).template for i in ids]  # type: ignore[union-attr]
    assert order.index("coordinator_digest.txt.j2") > max(i for i, t in enumerate(order) if t != "coordinator_digest.txt.j2")


def test_notes_beyond_the_daily_limit_are_kept_not_applied(make_app: AppFactory) -> None:
    app = make_app(max_notes_per_party_per_day=5)
    run(app, referral(CH))
    case = the_case(app)
    token = reply_code(raiser_request(app))
    for i in range(8):
        run(app, mail(CH.raiser, f"Re: [{case.reference}]", f"NOTE number {i}\n\nReply code: {token}\n"))
    assert len(events(app, "reply_note")) == 5
    refused = events(app, "reply_not_applied")
    assert [e.detail["reason"] for e in refused] == ["note_limit"] * 3
    with app.store.reading() as s:
        from sqlmodel import select

        from escalations.cases.models import CoordinatorNotice
        notices = [n for n in s.exec(select(CoordinatorNotice)).all() if n.detail.get("reason") == "note_limit"]
    assert len(notices) == 1  # the coordinator is told once


# ---- 10. nothing from a message in logs -------------------------------------------------------------


def test_header_values_never_reach_logs_or_quarantine(make_app: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    secret = "Amara Testchild 01/02/2015"
    raw = mail("ooo@school.example.org", "Automatic reply: away", "I am away.",
               headers={"Auto-Submitted": f"auto-replied ({secret})", "In-Reply-To": f"<{secret}@x>"})
    with caplog.at_level(logging.DEBUG):
        app.ingest(raw)
        outcomes = app.process_pending()
    assert outcomes[0].status == "quarantined" and outcomes[0].detail == "automated_no_case:auto_reply"
    row = app.store.list_inbound("quarantined")[0]
    assert secret not in (row.error or "")
    assert "Amara" not in caplog.text and "Testchild" not in caplog.text


def test_ingest_json_reports_refused_and_not_applied(app: App, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    case = the_case(app)
    token = reply_code(raiser_request(app))
    o1 = app.store.store_inbound(mail(CH.raiser, f"Re: [{case.reference}]", f"ACCEPT\n\nReply code: {token}\n"),
                                 source="cli")
    o2 = app.store.store_inbound(mail(CH.raiser, f"Re: [{case.reference}]", "WITHDRAW\n"), source="cli")
    outcomes = {o.inbound_id: o.detail for o in app.process_pending()}
    assert outcomes[o1.id] == "refused:ACCEPT"
    assert outcomes[o2.id] == "not_applied:no_token"
    assert json.dumps(outcomes)  # codes only


# ---- property: applied only for exactly one strict mailbox holding the token ------------------------

_PIECES = [CH.raiser, CH.raiser.upper(), "eve@attacker.example.com", f"<{CH.raiser}>", "<eve@attacker.example.com>",
           "Jo Bloggs", f'"{CH.raiser}"', "=?utf-8?q?Jo=3A_x?=", ",", ";", ":", "\u2028", "\x01", "(comment)", "<>",
           "@", " "]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=5).map(" ".join))
@example(CH.raiser)
@example(f"Jo Bloggs <{CH.raiser}>")
@example(f"{CH.raiser} <eve@attacker.example.com>")
def test_a_reply_is_applied_only_for_one_strict_mailbox_holding_the_token(make_app: AppFactory,
                                                                          from_value: str) -> None:
    app = _property_app(make_app)
    case = the_case(app)
    token = reply_code(raiser_request(app))
    before = len(events(app, "reply_note"))
    n = len(app.store.list_inbound())
    run(app, mail(CH.raiser, f"Re: [{case.reference}]", f"NOTE example {n}\n\nReply code: {token}\n",
                  raw_from=from_value))
    applied = len(events(app, "reply_note")) - before
    strict = strict_sender([from_value])
    assert applied == (1 if strict.address == CH.raiser else 0), (from_value, strict)
    assert the_case(app).status == "open"


_APPS: dict[int, App] = {}


def _property_app(make_app: AppFactory) -> App:
    """One app for all examples of the property (a case per example would make it slow)."""
    key = id(make_app)
    if key not in _APPS:
        _APPS.clear()
        a = make_app(max_notes_per_party_per_day=10_000)
        run(a, referral(CH))
        _APPS[key] = a
    return _APPS[key]
