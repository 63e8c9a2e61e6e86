"""Issue 5 acceptance, per partnership, end to end: every message goes in through a real Dovecot
(the running service's IMAP watcher) and out through a real SMTP relay (aiosmtpd); time moves only
when a test says so (FakeClock + ``App.tick``).

Scenarios (each for city-and-hackney, havering, wiltshire, tri-borough and sutton): resolved at
stage 1; climbs to the final stage by silence; climbs by ESCALATE replies; immediate-risk referral; a
child on a child protection plan; a forged reply; an Outlook reply with the old mail (and an old
ESCALATE) quoted below; an out-of-office from a stage contact; a restart in the middle of a tick.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from tests.servers.smtp import Captured
from tests.workflow.conftest import CHILD, Harness, HarnessFactory, out_of_office, referral, reply
from tests.workflow.profiles import CH, OPENED, PROFILES, SUTTON, Profile, at
from tests.workflow.test_wording import OTHER_AGENCY_TOLD

pytestmark = pytest.mark.servers

PLACEHOLDER = re.compile(r"@(?:[a-z0-9-]+\.)*example\.(?:org|net)$")

by_partnership = pytest.mark.parametrize("p", PROFILES, ids=[p.id for p in PROFILES])


# ---- checks shared by every scenario ---------------------------------------------------------------


def body(m: Captured) -> str:
    return str(m.message.get_content()).replace("\r\n", "\n")


def assert_mail_hygiene(h: Harness, reference: str, p: Profile) -> None:
    """Every mail of the case: the reference in the subject, never the child's name, only to addresses
    from config or the case (all placeholders), marked automatic, from the partnership mailbox."""
    sent = h.mails()
    assert sent
    for m in sent:
        msg = m.message
        # (a subject of 70-77 characters is folded whole onto a continuation line: a leading space
        # when parsed back, which clients drop)
        if msg["X-Escalations-Template"] == "coordinator_digest":  # spans cases: no reference, no name
            assert msg["Subject"].startswith("Escalations: "), msg["Subject"]
        else:
            assert msg["Subject"].strip().startswith(f"[{reference}]"), msg["Subject"]
        assert "Testchild" not in msg["Subject"] and CHILD.encode() not in m.raw
        assert b"Testchild" not in m.raw
        assert msg["Auto-Submitted"] in ("auto-generated", "auto-replied")
        assert p.mailbox.lower() in msg["From"].lower()
        for r in m.rcpt_tos:
            assert PLACEHOLDER.search(r.lower()), r


def token_of(m: Captured) -> str:
    match = re.search(r"Reply code: ([a-z2-7]{32})", body(m))
    assert match, "no reply code in the mail"
    return match.group(1)


def stage_practitioners(p: Profile) -> tuple[str, ...]:
    """Who is asked at stage 1: the raiser, the other practitioner (address given in the referral),
    and the directory contacts the policy adds (Wiltshire: the DSL; Sutton: the line manager)."""
    return (p.raiser, p.other_practitioner_email, *p.ladder[0].asked)


def stage_two_due(p: Profile) -> object:
    """Stage 2 reached at referral (Tue 3 Nov 10:00): 5 working days, or Wiltshire's 5 calendar days."""
    return at(8, 10) if p.id == "wiltshire" else at(10)


def stage_two_remind(p: Profile) -> object:
    return at(6) if p.id == "wiltshire" else at(9)


def open_case(h: Harness, p: Profile, **kw: object) -> str:
    h.send(referral(p, **kw))  # type: ignore[arg-type]
    case = h.case()
    assert case.reference.startswith(f"{p.prefix}-2026-"), case.reference
    h.one("referral_acknowledged", p.raiser)
    return case.reference


# ---- resolved at stage 1 ----------------------------------------------------------------------------

#: How the other side answers a RESOLVED: in writing (ACCEPT), or not at all (the window passes).
CONFIRMED_BY = {"city-and-hackney": "accept", "havering": "accept", "tri-borough": "accept",
                "wiltshire": "window", "sutton": "window"}


@by_partnership
def test_resolved_at_stage_one(harness: Harness, p: Profile) -> None:
    h = harness
    ref = open_case(h, p)
    case = h.case()
    assert (case.status, case.stage, case.due_at) == ("open", 1, p.ladder[0].due)
    asked = stage_practitioners(p)
    assert sorted(h.recipients(template="stage_request")) == sorted(a.lower() for a in asked)
    req = h.one("stage_request", p.raiser)
    assert p.ladder[0].due_text in body(req) and p.ladder[0].clause in body(req)
    assert req.message["Reply-To"].lower().startswith(p.mailbox.lower().split("@")[0] + "+")

    mark = h.mark()
    h.send(reply(req, p.raiser, "RESOLVED We met today. CSC will hold a strategy discussion on Friday and "
                                "complete a child and family assessment; I will attend.",
                 earlier="ESCALATE nobody has called me back", sender_name=p.raiser_name), at_time=at(5, 11))
    case = h.case()
    assert case.status == "awaiting_confirmation"
    assert "strategy discussion on Friday" in case.resolution["outcome"]
    assert "ESCALATE" not in case.resolution["outcome"] and "From:" not in case.resolution["outcome"]
    # Only the other side is asked to confirm (C&H 3.1 / Havering 3.1 / Wiltshire / Tri-borough §4 / Sutton 7.6).
    confirm = h.one("resolution_confirm_request", p.other_practitioner_email, since=mark)
    assert h.recipients(since=mark) == [p.other_practitioner_email]
    assert "strategy discussion on Friday" in body(confirm)

    mark = h.mark()
    if CONFIRMED_BY[p.id] == "accept":
        h.send(reply(confirm, p.other_practitioner_email, "ACCEPT Agreed. The assessment starts on Monday.",
                     style="gt"), at_time=at(5, 15))
        # Named by name and role, not by address.
        how, closed_at = f"confirmed in writing by {p.other_practitioner}, Practitioner (other agency)", at(5, 15)
        time_taken = "2 days 5 hours"
    else:
        # Nobody confirms: a reminder after one working day, the case closes after two (the stage's
        # own reminder and deadline timers, due meanwhile, are ignored while confirmation is pending).
        h.tick(at(6, 17))
        again = h.one("resolution_confirm_request", p.other_practitioner_email, since=mark)
        assert body(again).startswith(f"Dear {p.other_practitioner},\n\nReminder:")
        assert h.recipients(since=mark) == [p.other_practitioner_email]
        mark = h.mark()
        h.tick(at(9, 17))
        how, closed_at = "not confirmed or disputed within 2 working days", at(9, 17)
        time_taken = "6 days 7 hours"
    case = h.case()
    assert case.status == "closed" and case.closed_at == closed_at and case.due_at is None
    closing = h.mails("case_closed", since=mark)
    assert sorted(h.recipients(since=mark)) == sorted(a.lower() for a in asked)
    text = body(closing[0])
    assert "strategy discussion on Friday" in text          # the agreed outcome
    assert "Resolved at:      stage 1" in text              # the stage it was resolved at
    assert f"Time taken:       {time_taken}" in text        # and how long it took
    assert how in text
    assert not h.timers(case)  # nothing left to fire
    kinds = h.event_kinds(case)
    assert kinds.count("closed") == 1 and "reply_resolved" in kinds
    assert_mail_hygiene(h, ref, p)


# ---- climbing to the final stage by silence --------------------------------------------------------


@by_partnership
def test_climbs_to_final_stage_by_silence(harness: Harness, p: Profile) -> None:
    h = harness
    ref = open_case(h, p)
    stage_mark = 0
    previous_asked: tuple[str, ...] = ()
    for i, rung in enumerate(p.ladder):
        final = i == len(p.ladder) - 1
        case = h.case()
        assert (case.status, case.stage, case.due_at) == ("open", rung.number, rung.due), f"stage {rung.number}"
        asked = stage_practitioners(p) if i == 0 else rung.asked
        for address in asked:
            m = h.one("stage_request", address, since=stage_mark)
            assert f"Stage {rung.number}" in m.message["Subject"]
            assert rung.clause in body(m)
            if rung.due_text:
                assert f"Deadline:         {rung.due_text}" in body(m)
        if i:
            copy = h.one("stage_copy", p.raiser, since=stage_mark)  # the raiser is copied on every step
            assert f"stage {rung.number}" in body(copy)
            # the people asked before are told why the case moved on
            for address in previous_asked:
                if address.lower() not in {a.lower() for a in (*asked, p.raiser)}:
                    told = h.one("stage_escalated", address, since=stage_mark)
                    assert "passed without a confirmed resolution" in body(told)
        for address in rung.notified:
            h.one("stage_notification", address, since=stage_mark)
        everyone = {a.lower() for a in (*asked, p.raiser)}

        if rung.remind_before is not None:
            mark = h.mark()
            assert h.tick(rung.remind_before - timedelta(minutes=1))["timers_fired"] == 0
            h.tick(rung.remind_before)
            reminders = h.mails("reminder", since=mark)
            assert sorted(h.recipients(since=mark)) == sorted(everyone)
            assert all(rung.due_text in body(m) for m in reminders)
            assert f"Reminder: stage {rung.number} deadline {rung.due_text}" in reminders[0].message["Subject"]
            mark = h.mark()
            h.tick(rung.remind_before)  # a second tick at the same time sends nothing
            assert h.mails(since=mark) == []
        if rung.due is None:
            assert final, "only the final stage may have no deadline"
            assert not any(t.kind == "escalate" for t in h.timers(case))
            break
        if final:
            if rung.due > h.clock.now():
                mark = h.mark()
                h.tick(rung.due)
            # At the final stage nobody escalates further: the deadline reminds instead.
            reminders = h.mails("reminder", since=mark)
            assert sorted(h.recipients(since=mark, template="reminder")) == sorted(everyone)
            assert f"Stage {rung.number} deadline reached" in reminders[0].message["Subject"]
            assert "final stage" in body(reminders[0])
            assert h.case().stage == rung.number and h.case().status == "open"
            break
        stage_mark = h.mark()
        result = h.tick(rung.due)
        assert result["timers_fired"] >= 1
        previous_asked = asked
    final_case = h.case()
    assert final_case.stage == p.ladder[-1].number
    kinds = h.event_kinds(final_case)
    assert kinds.count("escalated") == len(p.ladder) - 1
    assert_mail_hygiene(h, ref, p)


# ---- climbing by ESCALATE replies, then the decision maker's written decision -------------------------


@by_partnership
def test_climbs_by_escalate_replies_and_decision_closes(harness: Harness, p: Profile) -> None:
    climb_by_escalate_replies(harness, p)


def test_climbs_by_escalate_replies_on_postgres(harness_factory: HarnessFactory, postgres_url: str) -> None:
    """The same, with the production database (PostgreSQL)."""
    climb_by_escalate_replies(harness_factory(database_url=postgres_url), CH)


def climb_by_escalate_replies(h: Harness, p: Profile) -> None:
    ref = open_case(h, p)
    mark = 0
    when = OPENED
    for i, rung in enumerate(p.ladder[:-1]):
        # Stage 1: the raiser; later stages: the other agency's contact replies ESCALATE.
        sender = p.raiser if i == 0 else rung.asked[-1]
        mail = h.one("stage_request", sender, since=mark)
        mark = h.mark()
        when += timedelta(hours=2)
        h.send(reply(mail, sender, f"ESCALATE stage {rung.number} could not agree on the need for an assessment"),
               at_time=when)
        case = h.case()
        nxt = p.ladder[i + 1]
        assert case.stage == nxt.number, f"ESCALATE at stage {rung.number}"
        for address in nxt.asked:
            h.one("stage_request", address, since=mark)
        ev = [e for e in h.events(case) if e.kind == "escalated"][-1]
        assert ev.actor is None and "asked to escalate" in ev.detail["because"]
    final = p.ladder[-1]
    dm_mail = h.one("stage_request", p.decision_maker, since=mark)
    # The final stage: ESCALATE is answered, never applied.
    mark = h.mark()
    h.send(reply(dm_mail, p.decision_maker, "ESCALATE"), at_time=when + timedelta(hours=1))
    help_mail = h.one("reply_help", p.decision_maker, since=mark)
    assert "final stage" in body(help_mail)
    assert h.case().stage == final.number and h.case().status == "open"
    # The decision maker's written decision closes the case, sent to everyone involved.
    mark = h.mark()
    h.send(reply(dm_mail, p.decision_maker, "RESOLVED Decision: CSC will convene a strategy discussion today and "
                                            "complete an assessment within 10 working days."),
           at_time=when + timedelta(hours=2))
    case = h.case()
    assert case.status == "closed"
    closed = next(e for e in h.events(case) if e.kind == "closed")
    assert closed.detail["how"] == "decided by the decision maker" and closed.actor == p.decision_maker
    closing = h.mails("case_closed", since=mark)
    assert p.raiser in h.recipients(since=mark) and p.decision_maker in h.recipients(since=mark)
    assert f"Resolved at:      stage {final.number}" in body(closing[0])
    assert "convene a strategy discussion today" in body(closing[0])
    # besides the closing record, only Tri-borough's Monitoring Form copy to the LSCB team (Appendix A)
    copies = h.mails("forms/form_copy", since=mark)
    assert [c.rcpt_tos for c in copies] == ([["triborough-lscb.manager@example.org"]] if p.id == "tri-borough" else [])
    told = set(h.recipients(since=mark, template="case_closed"))
    assert len(closing) == len(told)
    assert len(closing) + len(copies) == len(h.mails(since=mark))
    # Both agencies get the final decision (Wiltshire Stage Three "communicated to all parties", Sutton
    # 7.4/7.6, C&H/Havering 3.1, Tri-borough Appendix A), and the closing record says who was told.
    for address in OTHER_AGENCY_TOLD[p.id]:
        told_mail = h.one("case_closed", address, since=mark)
        assert "convene a strategy discussion today" in body(told_mail) and "Sent to:" in body(told_mail)
    assert {t["email"].lower() for t in closed.detail["told"]} == told
    assert "outcome_shared" in h.event_kinds(case)
    assert_mail_hygiene(h, ref, p)


# ---- immediate risk ----------------------------------------------------------------------------------


@by_partnership
def test_immediate_risk_referral(harness: Harness, p: Profile) -> None:
    h = harness
    ref = open_case(h, p, immediate=True)
    case = h.case()
    assert case.immediate_risk and case.stage == p.immediate_stage
    assert "immediate risk" in body(h.one("referral_acknowledged", p.raiser))
    route = [e for e in h.events(case) if e.kind == "immediate_risk_route"]
    assert len(route) == 1 and route[0].clause == p.immediate_clause
    for address in p.immediate_asked:
        m = h.one("stage_request", address)
        assert "immediate" in body(m).lower()
        assert p.immediate_clause in body(m)
    if p.id == "wiltshire":
        # Imminent risk: the DSL by the end of the same working day, then straight to Stage Three, with
        # the WSCB nominated persons told; the decision is due within 3 days.
        assert case.due_at == p.immediate_due
        assert "Tuesday 3 November 2026, 17:00" in body(h.one("stage_request", p.immediate_asked[0]))
        mark = h.mark()
        h.tick(p.immediate_due)
        case = h.case()
        assert case.stage == 4 and case.due_at == at(6)
        m = h.one("stage_request", "wil.police.partnership-member@example.org", since=mark)
        assert "Friday 6 November 2026, 17:00" in body(m)
        h.one("stage_notification", "wscb.nominated-person@example.org", since=mark)
    else:
        # The ladder continues alongside, at the stage the policy names, with its usual deadline.
        assert case.due_at == at(10)
        if p.immediate_stage == 1:
            req = h.one("stage_request", p.raiser)
            assert "immediate risk" in body(req)
        if p.id == "tri-borough":
            # The raising line manager is asked at the stage and by the immediate step: one mail.
            assert len(h.mails(to="tri.clch.line-manager@example.org")) == 1
            h.one("stage_request", "tri.wcc-csc.line-manager@example.org")
            # §2 ¶7: the referring agency may bypass to the senior officer: a second URGENT.
            mark = h.mark()
            h.send(reply(h.one("stage_copy", p.raiser), p.raiser, "URGENT the child has gone missing again"),
                   at_time=at(3, 12))
            case = h.case()
            assert case.stage == 4
            for address in ("tri.clch.head-of-service@example.org", "tri.wcc-csc.head-of-service@example.org"):
                h.one("stage_request", address, since=mark)
            assert "bypassed" in h.event_kinds(case)
        # The immediate step's people are not chased for the stage's own deadline.
        mark = h.mark()
        h.tick(at(9))
        for address in p.immediate_asked:
            if not any(address == a for r in p.ladder for a in r.asked):
                assert address not in h.recipients(since=mark)
    assert_mail_hygiene(h, ref, p)


def test_urgent_reply_follows_the_immediate_risk_route(harness: Harness) -> None:
    """An URGENT reply on a case already past stage 1 asks the DSL now and keeps the case where it is."""
    h = harness
    ref = open_case(h, CH, stage=2)
    assert h.case().stage == 2
    lm = h.one("stage_request", CH.other_line_manager)
    mark = h.mark()
    h.send(reply(lm, CH.other_line_manager, "URGENT the child disclosed new injuries today"), at_time=at(4, 9))
    case = h.case()
    assert case.immediate_risk and case.stage == 2 and case.due_at == at(10)
    h.one("stage_request", "ch.education.safeguarding-lead@example.org", since=mark)
    h.one("stage_copy", CH.raiser, since=mark)
    assert_mail_hygiene(h, ref, CH)


def test_incomplete_urgent_referral_is_routed_and_asked_for_the_rest(harness: Harness) -> None:
    """Sutton needs a Mosaic ID: an urgent referral without one still follows the immediate route."""
    from dataclasses import replace

    h = harness
    p = replace(SUTTON, extra_fields={})
    h.send(referral(p, immediate=True))
    case = h.case()
    ref = case.reference
    assert case.missing == ["child_id"] and case.immediate_risk and case.stage == 1
    incomplete = h.one("referral_incomplete", p.raiser)
    assert "Mosaic ID no." in body(incomplete)
    h.one("stage_request", "sut.shc.safeguarding-lead@example.org")
    # The missing field answered with INFO fills the case in.
    h.send(reply(incomplete, p.raiser, "INFO\nMosaic ID no.: MOS-765432"), at_time=at(3, 11))
    case = h.case()
    assert case.missing == [] and case.fields["child_id"] == "MOS-765432"
    assert_mail_hygiene(h, ref, p)


# ---- a child on a child protection plan ----------------------------------------------------------------


@by_partnership
def test_child_on_cp_plan(harness: Harness, p: Profile) -> None:
    """Referral says stage 2 is reached and the child is on a CP plan: the case opens at stage 2, and the
    CP Chair/IRO is notified where the policy says so (C&H 2.6, Havering 2.5) and nowhere else."""
    h = harness
    ref = open_case(h, p, status="subject to a child protection plan", stage=2)
    case = h.case()
    assert case.stage == 2 and case.fields["child_status"] == "cp_plan"
    assert case.due_at == stage_two_due(p)
    for address in p.ladder[1].asked:
        h.one("stage_request", address)
    notified = h.mails("stage_notification")
    assert sorted(h.recipients(template="stage_notification")) == sorted(p.cp_notified_at_stage_2)
    if not p.cp_notified_at_stage_2:
        assert "notified" not in h.event_kinds(case)
        assert_mail_hygiene(h, ref, p)
        return
    note_mail = notified[0]
    assert p.cp_clause in body(note_mail) and "No action is required" in body(note_mail)
    ev = [e for e in h.events(case) if e.kind == "notified"]
    assert ev and ev[0].clause == p.cp_clause and ev[0].detail["to"] == list(p.cp_notified_at_stage_2)
    # The CP Chair / IRO may add a note; they cannot move the case.
    who = p.cp_notified_at_stage_2[0]
    mark = h.mark()
    h.send(reply(note_mail, who, "NOTE The review conference is on 20 November; please invite the school."),
           at_time=at(4, 9))
    assert h.mails(since=mark) == []
    note = [e for e in h.events(h.case()) if e.kind == "reply_note"]
    assert note and note[0].actor == who and "review conference" in note[0].detail["text"]
    h.send(reply(note_mail, who, "ESCALATE"), at_time=at(4, 10))
    assert h.case().stage == 2
    h.one("reply_help", who, since=mark)
    assert_mail_hygiene(h, ref, p)


def test_looked_after_child_notifies_the_iro(harness: Harness) -> None:
    h = harness
    open_case(h, CH, status="looked after", stage=2)
    assert h.recipients(template="stage_notification") == ["hackney.iro-team@example.org"]


# ---- forged replies ------------------------------------------------------------------------------------


@by_partnership
def test_forged_reply_is_kept_not_applied(harness: Harness, p: Profile) -> None:
    h = harness
    ref = open_case(h, p)
    req = h.one("stage_request", p.raiser)
    start = h.mark()
    for attempt in range(2):
        # Someone else holding the raiser's mail (valid token in Reply-To, Message-ID and footer).
        mark = h.mark()
        h.send(reply(req, "intruder@example.net", "RESOLVED nothing to see here"), at_time=at(4, 9, 10 * attempt))
        case = h.case()
        assert case.status == "open" and case.stage == 1
        rejected = [e for e in h.events(case) if e.kind == "reply_not_applied"]
        assert len(rejected) == attempt + 1 and rejected[-1].actor == "intruder@example.net"
        assert rejected[-1].detail["reason"] == "token_invalid" and rejected[-1].detail["unverified"]
        assert h.recipients(since=mark) == []  # never mail an unknown address; the coordinator gets a digest
    # A party of the case replying with someone else's token: not applied; the genuine party (the
    # address the case holds) gets one fresh copy of their request a day.
    for attempt in range(2):
        mark = h.mark()
        h.send(reply(req, p.other_practitioner_email, "ESCALATE"), at_time=at(4, 9, 30 + 10 * attempt))
        assert h.case().stage == 1
        got = h.mails("reply_not_verified", to=p.other_practitioner_email, since=mark)
        assert len(got) == (1 if attempt == 0 else 0)
        if got:
            assert "not issued to the address it came from" in body(got[0])
            assert got[0].message["Reply-To"].lower().startswith(p.mailbox.lower().split("@")[0] + "+")
    assert h.mails("reply_not_applied_coordinator", to=p.coordinator, since=start) == []
    # The coordinator hears of all four in one digest.
    h.tick(at(4, 10))
    digests = h.mails("coordinator_digest", to=p.coordinator, since=start)
    assert len(digests) == 1 and body(digests[0]).count(ref) == 4
    h.tick(at(4, 10, 30))
    assert len(h.mails("coordinator_digest", to=p.coordinator, since=start)) == 1
    stored = h.app.store.list_inbound()
    assert all(r.status == "done" and r.kind == "reply" for r in stored[1:])  # kept, not quarantined
    assert_mail_hygiene(h, ref, p)


# ---- Outlook replies with the old mail quoted below ---------------------------------------------------


@by_partnership
def test_outlook_reply_with_old_mail_quoted(harness: Harness, p: Profile) -> None:
    h = harness
    ref = open_case(h, p)
    req = h.one("stage_request", p.raiser)
    # A NOTE on top; the quoted thread below holds an old ESCALATE (and our command list): neither acts.
    mark = h.mark()
    h.send(reply(req, p.raiser, "NOTE Spoke to the duty manager; a meeting is booked for Thursday.",
                 earlier="ESCALATE the other agency has not replied"), at_time=at(4, 9))
    case = h.case()
    assert case.stage == 1 and case.status == "open"
    assert h.mails(since=mark) == []
    note = next(e for e in h.events(case) if e.kind == "reply_note")
    assert note.detail["text"] == "Spoke to the duty manager; a meeting is booked for Thursday."
    # No command at all, "> " quoting of a mail full of commands: recorded as a note, sender told how.
    other = h.one("stage_request", p.other_practitioner_email)
    h.send(reply(other, p.other_practitioner_email, "Thanks - I will call on Thursday.", style="gt"),
           at_time=at(4, 10))
    assert h.case().stage == 1
    assert "How to reply" in body(h.one("reply_help", p.other_practitioner_email, since=mark))
    # The same with RESOLVED on top: applied, with only the new text as the record.
    h.send(reply(req, p.raiser, "Resolved - CSC will hold the strategy discussion.",
                 earlier="ESCALATE the other agency has not replied"), at_time=at(5, 9))
    case = h.case()
    assert case.status == "awaiting_confirmation" and case.stage == 1
    assert case.resolution["outcome"] == "CSC will hold the strategy discussion."
    assert "escalated" not in h.event_kinds(case)
    assert_mail_hygiene(h, ref, p)


# ---- out of office: the deputy takes over -----------------------------------------------------------


@by_partnership
def test_out_of_office_deputy_takes_over(harness: Harness, p: Profile) -> None:
    h = harness
    ref = open_case(h, p, stage=2)
    lm_mail = h.one("stage_request", p.other_line_manager)
    mark = h.mark()
    h.send(out_of_office(lm_mail, p.other_line_manager), at_time=at(3, 11))
    case = h.case()
    assert case.stage == 2
    deputy_req = h.one("stage_request", p.other_line_manager_deputy, since=mark)
    assert "(as deputy)" in deputy_req.message["Subject"] and "you are their deputy" in body(deputy_req)
    told = h.one("deputy_takeover", p.coordinator, since=mark)
    assert p.other_line_manager_deputy in body(told)
    assert p.other_line_manager not in h.recipients(since=mark)  # an auto-reply is never answered
    party = next(x for x in case.parties if x["email"] == p.other_line_manager)
    assert party["using_deputy"] is True
    assert "deputy_took_over" in h.event_kinds(case)
    # The reminder goes to the deputy now, not to the absent line manager.
    mark = h.mark()
    h.tick(stage_two_remind(p))  # type: ignore[arg-type]
    assert p.other_line_manager_deputy in h.recipients(since=mark, template="reminder")
    assert p.other_line_manager not in h.recipients(since=mark)
    # The deputy can act: RESOLVED, confirmed by the raising side.
    mark = h.mark()
    h.send(reply(deputy_req, p.other_line_manager_deputy, "RESOLVED An assessment is allocated today."),
           at_time=h.clock.now() + timedelta(hours=1))
    case = h.case()
    assert case.status == "awaiting_confirmation"
    raising_lm = p.ladder[1].asked[0]
    confirm = h.one("resolution_confirm_request", raising_lm, since=mark)
    h.send(reply(confirm, raising_lm, "ACCEPT"), at_time=h.clock.now() + timedelta(hours=1))
    assert h.case().status == "closed"
    assert_mail_hygiene(h, ref, p)


# ---- restart in the middle of a tick --------------------------------------------------------------------


class Crash(BaseException):
    """The process dies (not an error the tick loop would catch and record)."""


@by_partnership
def test_restart_in_the_middle_of_a_tick(harness: Harness, p: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness
    ref = open_case(h, p)
    first = p.ladder[0]
    assert first.remind_before is not None and first.due is not None

    # 1. The process dies inside the timer's transaction: nothing of it is committed or sent.
    original_apply = h.app.workflow.apply

    def dying_apply(*args: object, **kwargs: object) -> None:
        original_apply(*args, **kwargs)  # type: ignore[arg-type]
        raise Crash

    monkeypatch.setattr(h.app.workflow, "apply", dying_apply)
    h.clock.set(first.remind_before)
    mark = h.mark()
    with pytest.raises(Crash):
        h.app.tick(first.remind_before)
    h.restart()
    case = h.case()
    assert h.mails(since=mark) == [] and "reminder_sent" not in h.event_kinds(case)
    claimed = [t for t in h.timers(case, None) if t.kind == "remind_before"]
    assert claimed[0].status == "firing"
    # The new process leaves a fresh claim alone (the old one might still be alive) ...
    assert h.tick(first.remind_before)["timers_fired"] == 0
    assert h.mails(since=mark) == []
    # ... and takes it over once it is stale: each reminder goes out exactly once.
    h.tick(first.remind_before + timedelta(minutes=11))
    h.tick(first.remind_before + timedelta(minutes=12))
    everyone = sorted(a.lower() for a in (*stage_practitioners(p), p.raiser) if a)
    assert sorted(h.recipients(since=mark, template="reminder")) == sorted(set(everyone))
    assert h.event_kinds(h.case()).count("reminder_sent") == 1

    # 2. The process dies after the escalation is committed, before anything is sent.
    h.stop()
    monkeypatch.setattr(h.app, "send_outbox", lambda: (_ for _ in ()).throw(Crash()))
    mark = h.mark()
    h.clock.set(first.due)
    with pytest.raises(Crash):
        h.app.tick(first.due)
    assert h.case().stage == 2 and h.mails(since=mark) == []
    pending = [o for o in h.app.store.list_outbox() if o.status == "pending"]
    assert pending
    h.restart()  # the new process's outbox sends what the old one committed, once
    h.settle()
    h.tick(first.due)
    h.tick(first.due + timedelta(minutes=30))
    sent = h.mails(since=mark)
    ids = [m.message["Message-ID"] for m in sent]
    assert len(ids) == len(set(ids)) == len(pending)
    for address in p.ladder[1].asked:
        assert len(h.mails("stage_request", address, since=mark)) == 1
    assert all(o.status == "sent" for o in h.app.store.list_outbox())
    assert h.event_kinds(h.case()).count("escalated") == 1
    assert_mail_hygiene(h, ref, p)


def test_replies_to_an_earlier_stage_or_failing_dmarc_are_not_applied(harness: Harness) -> None:
    """A token for another stage, or a sender whose domain fails DMARC at our receiving server: kept,
    explained once, the coordinator told, nothing applied."""
    h = harness
    p = CH
    ref = open_case(h, p)
    stage1 = h.one("stage_request", p.raiser)
    h.send(reply(stage1, p.raiser, "ESCALATE no call back"), at_time=at(4, 9))
    assert h.case().stage == 2
    mark = h.mark()
    h.send(reply(stage1, p.raiser, "RESOLVED sorted after all"), at_time=at(4, 10))  # the stage 1 mail again
    case = h.case()
    assert case.stage == 2 and case.status == "open"
    rejected = [e for e in h.events(case) if e.kind == "reply_not_applied"]
    assert rejected[-1].detail["reason"] == "earlier_stage"
    assert "earlier stage" in body(h.one("reply_not_applied", p.raiser, since=mark))
    h.tick(at(4, 10, 30))
    assert "answers an earlier stage" in body(h.one("coordinator_digest", p.coordinator, since=mark))
    # The stage 2 mail, answered from a domain that fails DMARC (spoofed From): not applied either.
    lm_mail = h.one("stage_request", p.other_line_manager)
    spoofed = reply(lm_mail, p.other_line_manager, "RESOLVED all agreed")
    spoofed = (b"Authentication-Results: mx.hackney.gov.uk; spf=fail smtp.mailfrom=example.org; "
               b"dmarc=fail (p=reject) header.from=example.org\r\n" + spoofed)
    mark = h.mark()
    h.send(spoofed, at_time=at(4, 11))
    case = h.case()
    assert case.status == "open" and case.stage == 2
    rejected = [e for e in h.events(case) if e.kind == "reply_not_applied"]
    assert rejected[-1].detail["reason"] == "dmarc_fail"
    # The genuine line manager is sent a fresh copy; the coordinator hears of it in the next digest.
    h.one("reply_not_verified", p.other_line_manager, since=mark)
    h.tick(at(4, 12))
    assert "DMARC" in body(h.one("coordinator_digest", p.coordinator, since=mark))
    assert_mail_hygiene(h, ref, p)
