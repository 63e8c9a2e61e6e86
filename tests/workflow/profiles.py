"""What each partnership's policy says should happen to a test referral, written out by hand.

Every case here opens on Tuesday 3 November 2026 at 10:00 London time (GMT, so 10:00 UTC), raised
by a practitioner of ``raising_agency`` about ``other_agency``. The deadlines are worked out from the
policies (ARCHITECTURE "Deadlines"), not by calling the policy engine, so the tests check the
engine too:

* N working days: counted from the event's date if it is a working day and before 17:00, else from
  the next working day; due at 17:00 on the Nth working day after that date. A stage that opens at
  17:00 (the previous one's deadline) therefore counts from the next working day.
* N calendar days: the same local clock time N days later (Wiltshire "5 days", "3 days").
* "One working day before": 17:00 on the working day before the deadline's date.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime


def at(day: int, hour: int = 17, minute: int = 0, month: int = 11) -> datetime:
    """A moment in November/December 2026 (GMT = UTC then)."""
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


OPENED = at(3, 10)  # Tuesday 3 November 2026, 10:00


@dataclass(frozen=True)
class Rung:
    """One stage of the ladder when nobody answers."""

    number: int
    #: Directory contacts asked at this stage (besides the practitioners from the referral).
    asked: tuple[str, ...]
    due: datetime | None
    remind_before: datetime | None = None
    notified: tuple[str, ...] = ()
    clause: str = ""
    #: The policy's words for the deadline as the mail shows it ("Tuesday 10 November 2026, 17:00").
    due_text: str = ""


@dataclass(frozen=True)
class Profile:
    id: str
    mailbox: str
    prefix: str
    raiser: str
    raiser_name: str
    raising_agency: str
    other_agency: str
    other_practitioner: str
    other_practitioner_email: str
    coordinator: str
    ladder: tuple[Rung, ...]
    #: The final stage's decision maker (their written decision closes the case).
    decision_maker: str
    #: Immediate risk: who is asked at once, by when, and where the ladder stands afterwards.
    immediate_asked: tuple[str, ...]
    immediate_due: datetime
    immediate_clause: str
    #: Stage number the case is at right after an immediate-risk referral opens.
    immediate_stage: int
    #: Who is notified at stage 2 for a child on a child protection plan (C&H 2.6, Havering 2.5).
    cp_notified_at_stage_2: tuple[str, ...]
    cp_clause: str
    #: The other agency's stage-2 line manager and their configured deputy (out-of-office).
    other_line_manager: str
    other_line_manager_deputy: str
    borough: str | None = None
    #: Fields a referral must carry beyond the basics (Sutton's form: Mosaic ID).
    extra_fields: dict[str, str] = field(default_factory=dict)
    #: The referral's "timescale that protects the child" (Tri-borough: gives stage 4 a deadline).
    needed_by: str | None = None


CH = Profile(
    id="city-and-hackney", mailbox="chscp@hackney.gov.uk", prefix="CH",
    raiser="jo.bloggs@school.example.org", raiser_name="Jo Bloggs",
    raising_agency="Hackney Education", other_agency="Hackney Children's Social Care",
    other_practitioner="Sam Smith", other_practitioner_email="sam.smith@csc.example.org",
    coordinator="chscp.business-manager@example.org",
    ladder=(
        # C&H 1.4: one working week (5 working days) per discussion stage.
        Rung(1, (), at(10), at(9), clause="C&H 2.1-2.2", due_text="Tuesday 10 November 2026, 17:00"),
        Rung(2, ("ch.education.line-manager@example.org", "ch.csc.line-manager@example.org"), at(18), at(17),
             clause="C&H 2.3-2.4", due_text="Wednesday 18 November 2026, 17:00"),
        Rung(3, ("ch.education.senior-manager@example.org", "ch.csc.senior-manager@example.org"), at(26), at(25),
             notified=("ch.education.partnership-member@example.org", "ch.csc.partnership-member@example.org"),
             clause="C&H 2.7-2.8, 2.10", due_text="Thursday 26 November 2026, 17:00"),
        # C&H 2.12-2.15: no timescale for the Commissioner.
        Rung(4, ("chscp.icsc@example.org",), None, clause="C&H 2.11-2.15"),
    ),
    decision_maker="chscp.icsc@example.org",
    immediate_asked=("ch.education.safeguarding-lead@example.org",), immediate_due=OPENED,
    immediate_clause="C&H 1.5", immediate_stage=1,
    cp_notified_at_stage_2=("hackney.cp-chairs@example.org",), cp_clause="C&H 2.6",
    other_line_manager="ch.csc.line-manager@example.org",
    other_line_manager_deputy="ch.csc.line-manager-deputy@example.net",
)

HAVERING = Profile(
    id="havering", mailbox="safeguardingpartnerships@havering.gov.uk", prefix="HAV",
    raiser="alex.teacher@school.example.org", raiser_name="Alex Teacher",
    raising_agency="Havering Education Services", other_agency="Havering Children's Services",
    other_practitioner="Chris Worker", other_practitioner_email="chris.worker@csc.example.org",
    coordinator="hscp.business-manager@example.org",
    ladder=(
        Rung(1, (), at(10), at(9), clause="Havering 2.1-2.2", due_text="Tuesday 10 November 2026, 17:00"),
        Rung(2, ("hav.education.line-manager@example.org", "hav.csc.line-manager@example.org"), at(18), at(17),
             clause="Havering 2.3-2.4", due_text="Wednesday 18 November 2026, 17:00"),
        Rung(3, ("hav.education.senior-manager@example.org", "hav.csc.senior-manager@example.org"), at(26),
             at(25), notified=("hav.education.partnership-member@example.org",
                               "hav.csc.partnership-member@example.org"),
             clause="Havering 2.6-2.8", due_text="Thursday 26 November 2026, 17:00"),
        Rung(4, ("hscp.chair@example.org",), None, clause="Havering 2.9-2.13"),
    ),
    decision_maker="hscp.chair@example.org",
    immediate_asked=("hav.education.safeguarding-lead@example.org",), immediate_due=OPENED,
    immediate_clause="Havering 1.5", immediate_stage=1,
    cp_notified_at_stage_2=("havering.iro-service@example.org",), cp_clause="Havering 2.5",
    other_line_manager="hav.csc.line-manager@example.org",
    other_line_manager_deputy="hav.csc.line-manager-deputy@example.net",
)

WILTSHIRE = Profile(
    id="wiltshire", mailbox="LSCBGCSX@wiltshire.gov.uk", prefix="WIL",
    raiser="pc.jones@police.example.org", raiser_name="PC Jones",
    raising_agency="Wiltshire Police", other_agency="Wiltshire Council Children's Social Care",
    other_practitioner="Kim Carer", other_practitioner_email="kim.carer@csc.example.org",
    coordinator="wscb.business-manager@example.org",
    ladder=(
        # Wiltshire "Timescales" ¶2: no longer than 5 (calendar) days per stage.
        Rung(1, ("wil.police.safeguarding-lead@example.org",), at(8, 10), at(6),
             clause="Wiltshire: Pre-escalation", due_text="Sunday 8 November 2026, 10:00"),
        Rung(2, ("wil.police.line-manager@example.org", "wil.csc.line-manager@example.org"), at(13, 10), at(12),
             clause="Wiltshire: Stage One", due_text="Friday 13 November 2026, 10:00"),
        Rung(3, ("wil.police.senior-manager@example.org", "wil.csc.senior-manager@example.org"), at(18, 10),
             at(17), clause="Wiltshire: Stage Two", due_text="Wednesday 18 November 2026, 10:00"),
        # Stage Three: a final decision communicated to all parties within 3 days.
        Rung(4, ("wil.police.partnership-member@example.org",), at(21, 10), at(20),
             clause="Wiltshire: Stage Three", due_text="Saturday 21 November 2026, 10:00"),
    ),
    decision_maker="wil.police.partnership-member@example.org",
    # Imminent risk: the DSL by the end of the same working day, then straight to Stage Three.
    immediate_asked=("wil.police.safeguarding-lead@example.org",), immediate_due=at(3),
    immediate_clause="Wiltshire: Timescales ¶1", immediate_stage=0,
    cp_notified_at_stage_2=(), cp_clause="",
    other_line_manager="wil.csc.line-manager@example.org",
    other_line_manager_deputy="wil.csc.line-manager-deputy@example.net",
)

TRI_BOROUGH = Profile(
    id="tri-borough", mailbox="lscb@lbhf.gov.uk", prefix="TRI",
    raiser="hv.nurse@clch.example.org", raiser_name="Pat Nurse",
    raising_agency="Central London Community Healthcare NHS Trust",
    other_agency="Westminster Children's Services", borough="Westminster",
    other_practitioner="Lee Social", other_practitioner_email="lee.social@wcc.example.org",
    coordinator="triborough-lscb.manager@example.org",
    ladder=(
        Rung(1, (), at(10), at(9), clause="Tri-borough §2 Process ¶2", due_text="Tuesday 10 November 2026, 17:00"),
        Rung(2, ("tri.clch.line-manager@example.org", "tri.wcc-csc.line-manager@example.org"), at(18), at(17),
             clause="Tri-borough §2 Process ¶3", due_text="Wednesday 18 November 2026, 17:00"),
        Rung(3, ("tri.clch.safeguarding-lead@example.org", "tri.wcc-csc.safeguarding-lead@example.org"), at(26),
             at(25), notified=("wcc.safeguarding-contact@example.org",),
             clause="Tri-borough §2 Process ¶4-¶5", due_text="Thursday 26 November 2026, 17:00"),
        # §2 ¶6 sets no timescale for the Head of Service: the referral's needed_by (4 December) is the deadline.
        Rung(4, ("tri.clch.head-of-service@example.org", "tri.wcc-csc.head-of-service@example.org"), at(4, month=12),
             at(3, month=12), clause="Tri-borough §2 Process ¶5-¶6", due_text="Friday 4 December 2026, 17:00"),
        Rung(5, ("triborough.director-family-services@example.org", "triborough-lscb.chair@example.org"),
             at(4, month=12), clause="Tri-borough §2 Process ¶6; Appendix A checklist",
             due_text="Friday 4 December 2026, 17:00"),
    ),
    decision_maker="triborough-lscb.chair@example.org",
    # Same working day: a manager and/or safeguarding lead; the ladder continues at the line manager.
    immediate_asked=("tri.clch.line-manager@example.org", "tri.clch.safeguarding-lead@example.org"),
    immediate_due=at(3), immediate_clause="Tri-borough §2 Process ¶1, ¶7", immediate_stage=2,
    cp_notified_at_stage_2=(), cp_clause="",
    other_line_manager="tri.wcc-csc.line-manager@example.org",
    other_line_manager_deputy="tri.wcc-csc.line-manager-deputy@example.net",
    needed_by="04/12/2026",
)

SUTTON = Profile(
    id="sutton", mailbox="suttonLSCP@sutton.gov.uk.cjsm.net", prefix="SUT",
    raiser="hv.smith@shc.example.org", raiser_name="Dana Smith",
    raising_agency="Sutton Health and Care", other_agency="Sutton Children's Social Care",
    other_practitioner="Robin Case", other_practitioner_email="robin.case@csc.example.org",
    coordinator="sutton-lscp.business-manager@example.org",
    ladder=(
        # Provisional 5 working days per stage (the Appendix A flowchart is not in the text supplied).
        Rung(1, ("sut.shc.line-manager@example.org",), at(10), at(9), clause="Sutton 7.1",
             due_text="Tuesday 10 November 2026, 17:00"),
        Rung(2, ("sut.shc.line-manager@example.org", "sut.csc.line-manager@example.org"), at(18), at(17),
             clause="Sutton 7.2 ¶1", due_text="Wednesday 18 November 2026, 17:00"),
        Rung(3, ("sut.shc.senior-manager@example.org", "sut.csc.senior-manager@example.org"), at(26), at(25),
             clause="Sutton 7 ¶2; 7.2 ¶1", due_text="Thursday 26 November 2026, 17:00"),
        Rung(4, ("sut.shc.head-of-service@example.org", "sut.csc.head-of-service@example.org"), at(4, month=12),
             at(3, month=12), clause="Sutton 7.4", due_text="Friday 4 December 2026, 17:00"),
        Rung(5, ("sut.shc.partnership-member@example.org", "sut.csc.partnership-member@example.org"),
             at(14, month=12), at(11, month=12), clause="Sutton 7.4", due_text="Monday 14 December 2026, 17:00"),
        Rung(6, ("sutton-lscp.chair@example.org",), None, clause="Sutton 7.4"),
    ),
    decision_maker="sutton-lscp.chair@example.org",
    immediate_asked=("sut.shc.safeguarding-lead@example.org",), immediate_due=at(3),
    immediate_clause="Sutton 5; 7.3", immediate_stage=1,
    cp_notified_at_stage_2=(), cp_clause="",
    other_line_manager="sut.csc.line-manager@example.org",
    other_line_manager_deputy="sut.csc.line-manager-deputy@example.net",
    extra_fields={"Mosaic ID no.": "MOS-123456"},
)

PROFILES: tuple[Profile, ...] = (CH, HAVERING, WILTSHIRE, TRI_BOROUGH, SUTTON)
