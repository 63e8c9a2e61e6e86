"""The policy model, its loader and the engine's answers (who, by when, which clause)."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from escalations.policy_files import load_config
from escalations.routing.policy.model import Partnership, PolicyConfig
from escalations.routing.policy.plan import IMMEDIATE, next_step, stage_plan, timeline

from .conftest import CONFIG_DIR

LONDON = ZoneInfo("Europe/London")
POLICIES = Path("/work/shared/policies")


def L(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=LONDON)


def test_all_five_partnerships_load(shipped: PolicyConfig) -> None:
    assert sorted(shipped.partnerships) == ["city-and-hackney", "havering", "sutton", "tri-borough", "wiltshire"]
    assert {p.reference_prefix for p in shipped.partnerships.values()} == {"CH", "HAV", "WIL", "TRI", "SUT"}
    for p in shipped.partnerships.values():
        assert p.agencies and p.routes and p.immediate_risk is not None
        assert p.coordinator(), p.id


def test_intake_contract(shipped: PolicyConfig) -> None:
    """The names the intake pipeline relies on keep working."""
    p = shipped.partnership_for_address("SUTTONlscp@SUTTON.gov.uk.cjsm.net")
    assert p is not None and p.id == "sutton"
    assert p.primary_mailbox == "suttonLSCP@sutton.gov.uk.cjsm.net"
    assert p.all_required_fields()[-2:] == ["child_id", "child_dobs"]
    assert p.timezone == "Europe/London" and p.name
    assert shipped.partnership_for_address("nobody@example.org") is None
    assert set(shipped.all_mailboxes()) == {
        "chscp@hackney.gov.uk", "safeguardingpartnerships@havering.gov.uk", "lscbgcsx@wiltshire.gov.uk",
        "lscb@lbhf.gov.uk", "suttonlscp@sutton.gov.uk.cjsm.net"}


def test_every_shipped_person_is_a_placeholder() -> None:
    """All addresses except the partnerships' public mailboxes are on example.org / example.net."""
    mailboxes = {"chscp@hackney.gov.uk", "safeguardingpartnerships@havering.gov.uk", "lscbgcsx@wiltshire.gov.uk",
                 "lscb@lbhf.gov.uk", "suttonlscp@sutton.gov.uk.cjsm.net"}
    text = "\n".join(f.read_text() for f in CONFIG_DIR.rglob("*.yaml"))
    found = {m.lower() for m in re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", text)}
    others = {m for m in found - mailboxes if not m.endswith(("@example.org", "@example.net"))}
    assert others == set()
    assert len(found) > 100


def test_real_names_in_the_policies_never_appear() -> None:
    text = "\n".join(f.read_text() for f in CONFIG_DIR.rglob("*.yaml")).lower()
    for name in ("paula maxted", "hockley", "anna carpenter", "alexandra handford", "cathy smith"):
        assert name not in text


def test_snapshot_round_trip_and_version(shipped: PolicyConfig) -> None:
    for p in shipped.partnerships.values():
        again = Partnership.model_validate_json(p.model_dump_json())
        assert again == p
        assert again.policy_version == p.policy_version
        assert p.policy_version.startswith(p.policy.version + "+")
    # Stable across loads.
    assert load_config(CONFIG_DIR).partnerships["havering"].policy_version == \
        shipped.partnerships["havering"].policy_version


def test_editing_the_yaml_changes_the_version_but_not_a_snapshot(tmp_path: Path, shipped: PolicyConfig) -> None:
    shutil.copytree(CONFIG_DIR, tmp_path / "config")
    path = tmp_path / "config" / "partnerships" / "city-and-hackney.yaml"
    path.write_text(path.read_text().replace("          amount: 5\n", "          amount: 3\n", 1))
    edited = load_config(tmp_path / "config").partnerships["city-and-hackney"]
    old = shipped.partnerships["city-and-hackney"]
    assert edited.policy_version != old.policy_version
    snapshot = Partnership.model_validate_json(old.model_dump_json())
    opened = L(2026, 12, 23, 17, 30)
    assert timeline(snapshot, opened)[0].due == datetime(2027, 1, 5, 17, tzinfo=UTC)
    assert timeline(edited, opened)[0].due == datetime(2026, 12, 31, 17, tzinfo=UTC)


@pytest.mark.parametrize(
    ("pid", "text", "borough", "expected"),
    [
        ("city-and-hackney", "Hackney CSC", None, "hackney-csc"),
        ("city-and-hackney", "children’s social care", None, "hackney-csc"),
        ("city-and-hackney", "Met Police", None, "met-police"),
        ("city-and-hackney", "the health visitor (Homerton)", None, "homerton-hospital"),
        ("city-and-hackney", "School Nursing team", None, "homerton-hospital"),
        ("city-and-hackney", "Our GP practice", None, "nel-icb"),
        ("city-and-hackney", "City of London Police", None, "city-police"),
        ("havering", "NELFT CAMHS", None, "nelft"),
        ("havering", "Queen's Hospital A&E", None, "bhrut"),
        ("wiltshire", "Wiltshire Constabulary", None, "wiltshire-police"),
        ("tri-borough", "children's social care", "RBKC", "rbkc-csc"),
        ("tri-borough", "housing", "Westminster", "wcc-housing"),
        ("sutton", "probation officer", None, "probation"),
        ("sutton", "St Helier maternity", None, "esth"),
    ],
)
def test_find_agency(shipped: PolicyConfig, pid: str, text: str, borough: str | None, expected: str) -> None:
    a = shipped.partnerships[pid].find_agency(text, borough=borough)
    assert a is not None and a.id == expected


def test_find_agency_misses(shipped: PolicyConfig) -> None:
    tri = shipped.partnerships["tri-borough"]
    assert tri.find_agency("children's social care") is None   # three boroughs: ambiguous without one
    assert tri.find_agency("") is None
    assert shipped.partnerships["havering"].find_agency("Department of Magic") is None


def test_find_agency_answers_are_kept_with_the_partnership_and_leave_it_equal_to_a_fresh_load(
        shipped: PolicyConfig) -> None:
    ch = shipped.partnerships["city-and-hackney"]
    fresh = load_config(CONFIG_DIR).partnerships["city-and-hackney"]
    first = ch.find_agency("Hackney CSC")
    assert first is not None and ch.find_agency("Hackney CSC") is first   # the kept answer, not a new search
    assert ch.find_agency("Department of Magic") is None and ch.find_agency("Department of Magic") is None
    assert ch.lookups and not fresh.lookups
    assert ch == fresh   # what it has been asked is not part of what a partnership is
    # A kept answer is only ever its own partnership's: an edited directory is a new object, asked anew.
    renamed = [a.model_copy(update={"aliases": [*a.aliases, "Department of Magic"]}) if a.id == first.id else a
               for a in fresh.agencies]
    edited = fresh.model_copy(update={"agencies": renamed})
    edited_ch = Partnership.model_validate(edited.model_dump())
    found = edited_ch.find_agency("Department of Magic")
    assert found is not None and found.id == first.id
    assert ch.find_agency("Department of Magic") is None
    # A copy with changes starts with a memo of its own (a shared one would answer for the original).
    copied = ch.model_copy(update={"agencies": renamed})
    assert not copied.lookups and copied.lookups is not ch.lookups
    again = copied.find_agency("Department of Magic")
    assert again is not None and again.id == first.id and ch.find_agency("Department of Magic") is None
    assert not ch.model_copy(deep=True).lookups and ch.model_copy(deep=True) == ch


def test_find_agency_memo_starts_again_when_full(shipped: PolicyConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    from escalations.routing.policy import directory

    p = load_config(CONFIG_DIR).partnerships["havering"]
    monkeypatch.setattr(directory, "_MEMO_LIMIT", 3)
    for i in range(10):
        assert p.find_agency(f"Unknown agency {i}") is None
        assert len(p.lookups) <= 3
    a = p.find_agency("Havering CSC") or p.agencies[0]
    assert p.find_agency(a.name) == a   # still right after the memo started again


def test_stage_plan_resolves_contacts_and_deputies(shipped: PolicyConfig) -> None:
    p = shipped.partnerships["city-and-hackney"]
    plan = stage_plan(p, None, 1, L(2026, 3, 2, 9), raising_agency="GP", other_agency="Hackney CSC",
                      child_status="looked_after")
    assert [r.email for r in plan.asked] == ["ch.icb.line-manager@example.org", "ch.csc.line-manager@example.org"]
    assert plan.asked[0].deputy_email == "ch.icb.line-manager-deputy@example.net"
    assert plan.notified_parties == ("partnership.iro",) and plan.notification_clauses == ("C&H 2.6",)
    assert plan.clause == "C&H 2.3-2.4" and plan.due_clause == "C&H 1.4"
    assert plan.next_stage_index == 2 and not plan.is_final
    # No notification for a child who is neither on a plan nor looked after.
    assert stage_plan(p, None, 1, L(2026, 3, 2, 9), child_status="child_in_need").notified == ()


def test_unknown_agency_goes_to_the_coordinator(shipped: PolicyConfig) -> None:
    p = shipped.partnerships["havering"]
    plan = stage_plan(p, None, 1, L(2026, 3, 2, 9), raising_agency="Acme Ltd", other_agency="police")
    assert [u.party for u in plan.unresolved] == ["raising.line_manager"]
    assert [r.email for r in plan.coordinator] == ["hscp.business-manager@example.org"]
    first = stage_plan(p, None, 0, L(2026, 3, 2, 9))
    assert first.from_referral == ("raising.practitioner", "receiving.practitioner")


def test_resolution_panel_includes_the_disputing_agencies(shipped: PolicyConfig) -> None:
    p = shipped.partnerships["city-and-hackney"]
    plan = stage_plan(p, None, 3, L(2026, 3, 2, 9), raising_agency="Probation", other_agency="ELFT")
    agencies = [r.agency_id for r in plan.panel]
    assert len(agencies) == 3 and len(set(agencies)) == 3
    assert {"probation", "elft"} <= set(agencies)
    assert plan.panel_shortfall is None and plan.is_final
    non_member = stage_plan(p, None, 3, L(2026, 3, 2, 9), raising_agency="Hackney CVS", other_agency="ELFT")
    assert non_member.panel_shortfall is not None and "Hackney Council for Voluntary Service" in non_member.panel_shortfall


def test_needed_by_shortens_never_lengthens(shipped: PolicyConfig) -> None:
    p = shipped.partnerships["tri-borough"]
    opened = L(2026, 4, 2, 10)
    base = stage_plan(p, None, 0, opened)
    later = stage_plan(p, None, 0, opened, needed_by=date(2026, 5, 1))
    sooner = stage_plan(p, None, 0, opened, needed_by=datetime(2026, 4, 8, 12))   # naive: local time
    assert later.due == base.due and not later.shortened_by_needed_by
    assert sooner.due == L(2026, 4, 8, 12) and sooner.shortened_by_needed_by
    assert sooner.policy_due == base.due
    assert sooner.due_clause == "Tri-borough §2 Process ¶2"
    # A needed_by already past when a stage opens makes it due at once, never before it opens.
    passed = stage_plan(p, None, 1, L(2026, 4, 13, 17), needed_by=date(2026, 4, 8))
    assert passed.due == L(2026, 4, 13, 17) and passed.needed_by_passed


@pytest.mark.parametrize("pid", ["city-and-hackney", "havering", "wiltshire", "tri-borough", "sutton"])
def test_needed_by_never_lengthens_any_stage(shipped: PolicyConfig, pid: str) -> None:
    p = shipped.partnerships[pid]
    opened = L(2026, 12, 21, 9)
    plain = timeline(p, opened)
    for nb in (date(2026, 12, 22), date(2027, 1, 8), date(2027, 6, 1)):
        with_nb = timeline(p, opened, needed_by=nb)
        for a, b in zip(plain, with_nb, strict=True):
            if a.due is not None and b.due is not None and b.opens == a.opens:
                assert b.due <= a.due


def test_next_step(shipped: PolicyConfig) -> None:
    p = shipped.partnerships["wiltshire"]
    at = L(2026, 6, 1, 10)
    assert next_step(p, None, None, "opened", at).stage_id == "pre-escalation"  # type: ignore[union-attr]
    ir = next_step(p, None, None, "opened", at, immediate_risk=True)
    assert ir is not None and ir.stage_index == IMMEDIATE
    after = next_step(p, None, IMMEDIATE, "deadline_passed", at)
    assert after is not None and after.stage_id == "wscb-referral"
    assert next_step(p, None, 1, "unresolved", at).stage_id == "senior-managers"  # type: ignore[union-attr]
    assert next_step(p, None, 3, "unresolved", at) is None
    assert next_step(p, None, 1, "resolved", at) is None


def test_every_rule_cites_a_clause_of_its_own_policy(shipped: PolicyConfig) -> None:
    prefix = {"city-and-hackney": "C&H", "havering": "Havering", "wiltshire": "Wiltshire",
              "tri-borough": "Tri-borough", "sutton": "Sutton"}
    for pid, p in shipped.partnerships.items():
        dump = yaml.safe_dump(p.model_dump(mode="json"))
        clauses = re.findall(r"clause: (.+)", dump)
        assert clauses
        for c in clauses:
            if c == "null":  # a value the policy does not set (e.g. retention): its note says whose it is
                continue
            assert c.strip("'\"").startswith(prefix[pid]), (pid, c)


def test_policy_sources_are_cited() -> None:
    for f in ("city-and-hackney-2021.txt", "havering-2020.txt", "wiltshire-2018.txt", "tri-borough-2014.txt",
              "sutton-lscp.txt"):
        assert f in "\n".join(x.read_text() for x in (CONFIG_DIR / "partnerships").glob("*.yaml"))
    if POLICIES.is_dir():
        assert "one working week" in (POLICIES / "city-and-hackney-2021.txt").read_text()


def test_old_import_path_still_works() -> None:
    """Callers written against the single module keep working: the package re-exports every name."""
    import escalations.policy_files as files
    import escalations.routing.policy as old
    from escalations.routing.policy import model, plan

    assert old.load_config is files.load_config and old.ConfigError is files.ConfigError
    assert old.ConfigIssue is files.ConfigIssue
    assert old.Partnership is model.Partnership and old.PolicyConfig is model.PolicyConfig
    assert old.stage_plan is plan.stage_plan and old.IMMEDIATE == plan.IMMEDIATE == -1
    for name in old.__all__:
        assert getattr(old, name) is not None
