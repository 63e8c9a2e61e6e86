"""One walk per partnership: a case nobody resolves, across a bank-holiday period.

Every expected time below was worked out by hand from the policy text and the deadline rules of
ARCHITECTURE.md (counting date D = the event's date if a working day before 17:00, else the next
working day; N working days = 17:00 on the Nth working day after D); the working is in each docstring.
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from escalations.routing.policy.model import PolicyConfig, norm_name
from escalations.routing.policy.plan import StagePlan, timeline

LONDON = ZoneInfo("Europe/London")


def L(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=LONDON)


def walk(plans: list[StagePlan]) -> list[tuple[int, datetime | None, datetime | None]]:
    return [(p.number, p.opens.astimezone(LONDON) if p.opens else None,
             p.due.astimezone(LONDON) if p.due else None) for p in plans]


def test_city_and_hackney_christmas(shipped: PolicyConfig) -> None:
    """Opened Wed 23 Dec 2026 17:30 (after the 17:00 day end), child on a CP plan.

    Stage 1 (C&H 1.4: one working week = 5 working days): D = Thu 24 Dec; 25 Dec, Sat 26, Sun 27,
    Mon 28 (Boxing Day substitute) are not working days → Tue 29, Wed 30, Thu 31, Mon 4 Jan (1 Jan is
    a bank holiday), Tue 5 Jan → Tue 5 Jan 2027 17:00 GMT.
    Stage 2 opens Tue 5 Jan 17:00 → D = Wed 6 → Thu 7, Fri 8, Mon 11, Tue 12, Wed 13 → Wed 13 Jan 17:00;
    CP Chair notified (C&H 2.6). Stage 3 opens Wed 13 Jan 17:00 → D = Thu 14 → Fri 15, Mon 18, Tue 19,
    Wed 20, Thu 21 → Thu 21 Jan 17:00. Stage 4 (ICSC) opens then; the policy sets no deadline.
    """
    plans = timeline(shipped.partnerships["city-and-hackney"], L(2026, 12, 23, 17, 30), child_status="cp_plan")
    assert walk(plans) == [
        (1, L(2026, 12, 23, 17, 30), L(2027, 1, 5, 17)),
        (2, L(2027, 1, 5, 17), L(2027, 1, 13, 17)),
        (3, L(2027, 1, 13, 17), L(2027, 1, 21, 17)),
        (4, L(2027, 1, 21, 17), None),
    ]
    assert plans[1].notified_parties == ("partnership.cp_chair",)
    assert plans[1].notification_clauses == ("C&H 2.6",)
    assert plans[1].suggested_actions[0].text.startswith("Consider whether a professionals' meeting")
    assert plans[3].decision_maker is not None and plans[3].decision_maker.party == "partnership.independent_commissioner"


def test_havering_august_bank_holiday(shipped: PolicyConfig) -> None:
    """Opened Fri 28 Aug 2026 11:00 BST; needed_by 30 Sep 2026.

    Stage 1 (Havering 1.4, 5 working days): D = Fri 28 Aug; Mon 31 Aug is the summer bank holiday →
    Tue 1, Wed 2, Thu 3, Fri 4, Mon 7 Sep → Mon 7 Sep 17:00. Stage 2: D = Tue 8 → Wed 9, Thu 10, Fri 11,
    Mon 14, Tue 15 → Tue 15 Sep 17:00; the IRO is notified for a looked-after child (2.5). Stage 3: D = Wed 16
    → Thu 17, Fri 18, Mon 21, Tue 22, Wed 23 → Wed 23 Sep 17:00. Stage 4 (HSCP Chair) has no policy
    deadline, so the referral's needed_by (a date: 17:00 that day) sets it: Wed 30 Sep 17:00.
    """
    plans = timeline(shipped.partnerships["havering"], L(2026, 8, 28, 11), child_status="looked_after",
                     needed_by=date(2026, 9, 30))
    assert walk(plans) == [
        (1, L(2026, 8, 28, 11), L(2026, 9, 7, 17)),
        (2, L(2026, 9, 7, 17), L(2026, 9, 15, 17)),
        (3, L(2026, 9, 15, 17), L(2026, 9, 23, 17)),
        (4, L(2026, 9, 23, 17), L(2026, 9, 30, 17)),
    ]
    assert plans[1].notified_parties == ("partnership.iro",)
    assert [p.shortened_by_needed_by for p in plans] == [False, False, False, True]


def test_wiltshire_spring_bank_holiday(shipped: PolicyConfig) -> None:
    """Opened Thu 21 May 2026 15:00 BST. "No longer than 5 days" per stage, read as calendar days, so the
    Spring bank holiday (Mon 25 May) does not count: pre-escalation → Tue 26 May 15:00; Stage One →
    Sun 31 May 15:00; Stage Two → Fri 5 Jun 15:00; Stage Three decision "within 3 days" → Mon 8 Jun 15:00.
    """
    plans = timeline(shipped.partnerships["wiltshire"], L(2026, 5, 21, 15))
    assert walk(plans) == [
        (1, L(2026, 5, 21, 15), L(2026, 5, 26, 15)),
        (2, L(2026, 5, 26, 15), L(2026, 5, 31, 15)),
        (3, L(2026, 5, 31, 15), L(2026, 6, 5, 15)),
        (4, L(2026, 6, 5, 15), L(2026, 6, 8, 15)),
    ]


def test_wiltshire_imminent_risk_over_christmas(shipped: PolicyConfig) -> None:
    """Opened Thu 24 Dec 2026 18:00 with imminent risk. Consult the DSL the same working day (read as
    the day end of the counting date): after 17:00, so D = the next working day: Fri 25 Dec, Sat, Sun,
    Mon 28 (substitute) are not → Tue 29 Dec 17:00. Then straight to Stage Three (referral to the WSCB
    nominated persons), opening Tue 29 Dec 17:00; decision within 3 calendar days → Fri 1 Jan 2027 17:00
    (a bank holiday, but calendar days do not skip holidays).
    """
    plans = timeline(shipped.partnerships["wiltshire"], L(2026, 12, 24, 18), immediate_risk=True)
    assert walk(plans) == [
        (0, L(2026, 12, 24, 18), L(2026, 12, 29, 17)),
        (4, L(2026, 12, 29, 17), L(2027, 1, 1, 17)),
    ]
    assert plans[0].asked_parties == ("raising.safeguarding_lead",)
    assert plans[1].notified_parties == ("partnership.nominated_persons",)


def test_tri_borough_easter(shipped: PolicyConfig) -> None:
    """Opened Thu 2 Apr 2026 10:00 BST in Westminster.

    Practitioner level (§2 ¶2, 5 working days): D = Thu 2 Apr; Good Friday 3 and Easter Monday 6 Apr are
    holidays → Tue 7, Wed 8, Thu 9, Fri 10, Mon 13 → Mon 13 Apr 17:00 BST.
    Line manager (§2 ¶3): reached within 24 hours → by Tue 14 Apr 17:00; resolution in 5 working days from
    Mon 13 Apr 17:00 → D = Tue 14 → Wed 15, Thu 16, Fri 17, Mon 20, Tue 21 → Tue 21 Apr 17:00.
    Safeguarding leads (§2 ¶4-¶5): reach by Wed 22 Apr 17:00; D = Wed 22 → Thu 23, Fri 24, Mon 27, Tue 28,
    Wed 29 → Wed 29 Apr 17:00. Head of Service: no policy deadline; the DCS/LSCB step is then unscheduled.
    """
    plans = timeline(shipped.partnerships["tri-borough"], L(2026, 4, 2, 10), borough="Westminster",
                     raising_agency="CLCH", other_agency="children's social care")
    assert walk(plans) == [
        (1, L(2026, 4, 2, 10), L(2026, 4, 13, 17)),
        (2, L(2026, 4, 13, 17), L(2026, 4, 21, 17)),
        (3, L(2026, 4, 21, 17), L(2026, 4, 29, 17)),
        (4, L(2026, 4, 29, 17), None),
        (5, None, None),
    ]
    assert plans[1].escalate_by == L(2026, 4, 14, 17)
    assert plans[2].escalate_by == L(2026, 4, 22, 17)
    assert [r.email for r in plans[2].asked] == ["tri.clch.safeguarding-lead@example.org",
                                                 "tri.wcc-csc.safeguarding-lead@example.org"]
    assert [r.email for r in plans[2].notified] == ["wcc.safeguarding-contact@example.org"]
    assert plans[1].forms[0].name.endswith("Monitoring Form")


def test_tri_borough_immediate_risk(shipped: PolicyConfig) -> None:
    """Immediate risk on Thu 2 Apr 2026 10:00: manager/safeguarding lead the same working day → Thu 2 Apr
    17:00; the line-manager stage runs alongside from 10:00, due 5 working days later → Mon 13 Apr 17:00."""
    plans = timeline(shipped.partnerships["tri-borough"], L(2026, 4, 2, 10), immediate_risk=True)
    assert walk(plans)[:2] == [
        (0, L(2026, 4, 2, 10), L(2026, 4, 2, 17)),
        (2, L(2026, 4, 2, 10), L(2026, 4, 13, 17)),
    ]


def test_sutton_may_bank_holidays(shipped: PolicyConfig) -> None:
    """Opened Fri 1 May 2026 12:00 BST (provisional 5 working days per stage; May Day Mon 4 May and the
    Spring bank holiday Mon 25 May).

    1: D = Fri 1 May → Tue 5, Wed 6, Thu 7, Fri 8, Mon 11 → Mon 11 May 17:00.
    2: D = Tue 12 → Wed 13, Thu 14, Fri 15, Mon 18, Tue 19 → Tue 19 May 17:00.
    3: D = Wed 20 → Thu 21, Fri 22, Tue 26, Wed 27, Thu 28 → Thu 28 May 17:00 ("without delay": reach by
       Tue 19 May 17:00).
    4: D = Fri 29 → Mon 1 Jun, Tue 2, Wed 3, Thu 4, Fri 5 → Fri 5 Jun 17:00.
    5: D = Mon 8 Jun → Tue 9, Wed 10, Thu 11, Fri 12, Mon 15 → Mon 15 Jun 17:00.
    6: Independent LSCP Chair, no policy deadline.
    """
    plans = timeline(shipped.partnerships["sutton"], L(2026, 5, 1, 12))
    assert walk(plans) == [
        (1, L(2026, 5, 1, 12), L(2026, 5, 11, 17)),
        (2, L(2026, 5, 11, 17), L(2026, 5, 19, 17)),
        (3, L(2026, 5, 19, 17), L(2026, 5, 28, 17)),
        (4, L(2026, 5, 28, 17), L(2026, 6, 5, 17)),
        (5, L(2026, 6, 5, 17), L(2026, 6, 15, 17)),
        (6, L(2026, 6, 15, 17), None),
    ]
    assert plans[2].escalate_by == L(2026, 5, 19, 17)
    assert plans[0].secure_mail is not None and "CJSM" in plans[0].secure_mail.means


def test_sutton_strategic_route_by_subgroup(shipped: PolicyConfig) -> None:
    p = shipped.partnerships["sutton"]
    assert p.choose_route("This is a strategic partnership issue about training").id == "strategic"
    assert p.choose_route("Dissent from the child protection conference decision").id == "cp-conference"
    assert p.choose_route("The GP has not referred").id == "professional-disagreement"
    # the concerns themselves are never cached (norm_name's cache is for the policy's own names)
    norm_name.cache_clear()
    p.choose_route("Ava Smith's school has not referred her")
    names = norm_name.cache_info().currsize
    assert names > 0
    p.choose_route("Another child entirely, and a new concern about her GP")
    assert norm_name.cache_info().currsize == names
    plans = timeline(p, L(2026, 5, 1, 12), route_id="strategic", scope="quality-assurance")
    assert [r.email for r in plans[0].asked] == ["sutton-lscp.qa-chair@example.org"]
    unscoped = timeline(p, L(2026, 5, 1, 12), route_id="strategic")
    assert unscoped[0].asked == () and unscoped[0].unresolved[0].party == "partnership.subgroup_chair"
