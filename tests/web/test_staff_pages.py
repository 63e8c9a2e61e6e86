"""The staff pages in-process (Starlette's test client over the real app, SQLite, the real workflow):
what each role sees and may do, IDOR, CSRF, personal details audited and never in a URL or title, and
``Cache-Control: no-store``. The browser tests (test_staff_pages_browser.py) drive the same pages in chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from escalations.app import App
from escalations.cases.models import CaseEvent
from escalations.web.accounts import Identity
from escalations.web.app import create_web_app
from escalations.web.roles import Role
from tests.conftest import AppFactory

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DEMO = Path(__file__).resolve().parents[2] / "escalations" / "demo"
CHILD = re.compile(r"Ava|Test-?child", re.I)


def child_names(app: App, ref: str) -> list[str]:
    case = app.store.case_by_reference(ref)
    assert case is not None
    return list(case.fields.get("child_names") or [])


@pytest.fixture
def service(make_app: AppFactory) -> Iterator[App]:
    app = make_app()
    for name in ("city-and-hackney", "havering"):
        app.ingest((DEMO / f"{name}.eml").read_bytes())
    app.process_pending()
    yield app


def client_for(app: App, role: Role, partnerships: set[str], case_refs: set[str] | None = None) -> TestClient:
    web = create_web_app(app, app.settings)
    client = TestClient(web, base_url="http://127.0.0.1")
    token = web.state.web.accounts.create_session(
        Identity(email=f"{role.value}@example.org", role=role, partnerships=frozenset(partnerships),
                 case_refs=frozenset(case_refs or ())), method="test", ip="127.0.0.1")
    client.cookies.set(web.state.web.cookie_name, token)
    return client


def refs(app: App) -> dict[str, str]:
    return {c.partnership: c.reference for c in app.store.list_cases()}


def csrf(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF field in the page"
    return m.group(1)


def audit(client: TestClient) -> list[Any]:
    web = client.app.state.web  # type: ignore[attr-defined]
    return list(web.accounts.audit_rows())


def test_today_lists_the_new_referral_per_partnership(service: App) -> None:
    client = client_for(service, Role.VIEWER, {"city-and-hackney"})
    r = client.get("/")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    ch = refs(service)["city-and-hackney"]
    assert "City &amp; Hackney" in r.text and ch in r.text
    assert refs(service)["havering"] not in r.text  # another partnership's case is not listed
    for title in ("Due today", "Overdue", "Awaiting confirmation", "Waiting for routing", "Incomplete referrals",
                  "Quarantined mail", "Bounces"):
        assert title in r.text


def test_cases_filter_sort_page_and_csv(service: App) -> None:
    client = client_for(service, Role.VIEWER, {"city-and-hackney", "havering"})
    ch, hav = refs(service)["city-and-hackney"], refs(service)["havering"]
    r = client.get("/cases")
    assert ch in r.text and hav in r.text
    r = client.get("/cases", params={"partnership": "havering"})
    assert hav in r.text and f"/cases/{ch}" not in r.text
    r = client.get("/cases", params={"reference": ch})
    assert f"/cases/{ch}" in r.text and f"/cases/{hav}" not in r.text
    r = client.get("/cases", params={"status": "closed"})
    assert "No cases match" in r.text
    r = client.get("/cases", params={"sort": "reference", "order": "asc"})
    assert r.text.index(f"/cases/{ch}") < r.text.index(f"/cases/{hav}")
    r = client.get("/cases.csv")
    assert r.headers["content-type"].startswith("text/csv")
    assert ch in r.text and hav in r.text and not CHILD.search(r.text)


def test_case_page_hides_personal_details_until_asked_and_audits(service: App, caplog: Any,
                                                                 capfd: Any) -> None:
    client = client_for(service, Role.VIEWER, {"city-and-hackney"})
    ref = refs(service)["city-and-hackney"]
    names = child_names(service, ref)
    assert names
    r = client.get(f"/cases/{ref}")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert not any(n in r.text for n in names)
    assert "Show personal details" in r.text
    title = re.search(r"<title>(.*?)</title>", r.text, re.S)
    assert title and ref in title.group(1)
    forged = client.post(f"/cases/{ref}/personal-details", data={"csrf_token": "forged"})
    assert forged.status_code == 403 and not any(n in forged.text for n in names)
    shown = client.post(f"/cases/{ref}/personal-details", data={"csrf_token": csrf(r.text)})
    assert shown.status_code == 200 and all(n in shown.text for n in names)
    assert shown.headers["cache-control"] == "no-store"
    title = re.search(r"<title>(.*?)</title>", shown.text, re.S)
    assert title and not any(n in title.group(1) for n in names)
    actions = [(a.action, a.case_ref) for a in audit(client)]
    assert ("case.personal_details", ref) in actions and ("case.view", ref) in actions
    out, err = capfd.readouterr()
    assert not any(n in caplog.text or n in out or n in err for n in names)  # never in a log line


def test_idor_another_partnerships_case_is_not_found(service: App) -> None:
    client = client_for(service, Role.COORDINATOR, {"city-and-hackney"})
    hav = refs(service)["havering"]
    page = client.get(f"/cases/{refs(service)['city-and-hackney']}")
    for r in (client.get(f"/cases/{hav}"), client.get("/cases/NOPE-2026-0001"),
              client.post(f"/cases/{hav}/personal-details", data={"csrf_token": csrf(page.text)}),
              client.post(f"/cases/{hav}/actions/note", data={"csrf_token": csrf(page.text), "reason": "x",
                                                              "text": "x"})):
        assert r.status_code == 404
    case = service.store.case_by_reference(hav)
    assert case is not None and case.id is not None
    assert not [e for e in service.store.case_events(case.id) if e.kind.startswith("staff_")]


def test_practitioner_sees_only_their_case(service: App) -> None:
    ch, hav = refs(service)["city-and-hackney"], refs(service)["havering"]
    client = client_for(service, Role.PRACTITIONER, {"city-and-hackney"}, {ch})
    assert client.get(f"/cases/{ch}").status_code == 200
    assert client.get(f"/cases/{hav}").status_code == 404
    listing = client.get("/cases")
    assert ch in listing.text and hav not in listing.text
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/cases/{ch}"


def _events(app: App, ref: str) -> list[CaseEvent]:
    case = app.store.case_by_reference(ref)
    assert case is not None and case.id is not None
    return app.store.case_events(case.id)


def test_coordinator_adds_a_note_and_escalates_through_the_workflow(service: App) -> None:
    client = client_for(service, Role.COORDINATOR, {"city-and-hackney"})
    ref = refs(service)["city-and-hackney"]
    page = client.get(f"/cases/{ref}")
    token = csrf(page.text)
    missing = client.post(f"/cases/{ref}/actions/note", data={"csrf_token": token, "text": "called"})
    assert missing.status_code == 400 and "Enter a reason" in missing.text
    r = client.post(f"/cases/{ref}/actions/note", data={"csrf_token": token, "text": "Called the school",
                                                        "reason": "follow-up"}, follow_redirects=False)
    assert r.status_code == 303
    note = [e for e in _events(service, ref) if e.kind == "staff_note"]
    assert note and note[0].actor == "coordinator@example.org" and note[0].detail["text"] == "Called the school"
    shown = client.get(f"/cases/{ref}")
    assert "Called the school" in shown.text and "Done: add a note." in shown.text
    before = service.store.case_by_reference(ref)
    assert before is not None
    r = client.post(f"/cases/{ref}/actions/escalate", data={"csrf_token": token, "reason": "no reply by phone"},
                    follow_redirects=False)
    assert r.status_code == 303
    after = service.store.case_by_reference(ref)
    assert after is not None and (after.stage or 0) == (before.stage or 0) + 1
    assert [e.kind for e in _events(service, ref)].count("escalated") == 1
    actions = [a.action for a in audit(client)]
    assert "case.action.note" in actions and "case.action.escalate" in actions
    forged = client.post(f"/cases/{ref}/actions/escalate", data={"csrf_token": "x", "reason": "again"})
    assert forged.status_code == 403


def test_viewer_cannot_act(service: App) -> None:
    client = client_for(service, Role.VIEWER, {"city-and-hackney"})
    ref = refs(service)["city-and-hackney"]
    page = client.get(f"/cases/{ref}")
    assert "/actions/escalate" not in page.text
    r = client.post(f"/cases/{ref}/actions/escalate", data={"csrf_token": csrf(page.text), "reason": "x"})
    assert r.status_code == 403
    assert not [e for e in _events(service, ref) if e.kind.startswith("staff_")]


def test_policy_pages_show_roles_by_name_and_the_calculator(service: App) -> None:
    client = client_for(service, Role.VIEWER, {"city-and-hackney"})
    index = client.get("/policy")
    assert "Configuration OK" in index.text or "configuration error" in index.text
    r = client.get("/policy/city-and-hackney", params={"opened_date": "2026-11-03", "opened_time": "10:00"})
    assert r.status_code == 200
    assert "raising.line_manager" not in r.text and "Line manager" in r.text
    assert 'href="/audit"' not in r.text
    admin = client_for(service, Role.ADMIN, {"city-and-hackney"})
    assert 'href="/audit"' in admin.get("/").text
    assert "Tue 10 Nov 2026, 17:00" in r.text  # C&H 1.4: five working days
    assert client.get("/policy/havering").status_code == 404


def test_every_case_mail_links_to_the_case_page_when_public_url_is_set(make_app: AppFactory) -> None:
    from escalations.settings import WebSettings

    app = make_app(web=WebSettings(public_url="https://escalations.example.org/"))
    app.ingest((DEMO / "city-and-hackney.eml").read_bytes())
    app.process_pending()
    ref = refs(app)["city-and-hackney"]
    rows = [o for o in app.store.list_outbox() if o.case_id is not None]
    assert rows
    for o in rows:
        body = o.raw.decode("utf-8", "replace").replace("=\r\n", "")
        assert f"https://escalations.example.org/cases/{ref}" in body, o.template
    from escalations.mailer.outbox import Renderer

    assert not Renderer().env.globals["case_page_base"]  # no public_url: no link


def test_today_counts_overdue_and_quarantined(service: App, clock: Any) -> None:
    from datetime import timedelta

    ref = refs(service)["city-and-hackney"]
    case = service.store.case_by_reference(ref)
    assert case is not None and case.due_at is not None
    stored = service.ingest(b"From: nobody\r\nTo: chscp@hackney.gov.uk\r\n\r\n")
    service.store.quarantine(stored.id, "parse_error\nValueError")
    clock.set(case.due_at + timedelta(hours=1))
    client = client_for(service, Role.COORDINATOR, {"city-and-hackney"})
    r = client.get("/")
    overdue = r.text.split('id="city-and-hackney-overdue"', 1)[1].split("<h3", 1)[0]
    assert "Overdue (1)" in r.text and ref in overdue
    assert "Quarantined mail (1)" in r.text and "parse_error" in r.text
    token = csrf(r.text)
    done = client.post(f"/quarantine/{stored.id}", data={"csrf_token": token, "action": "discard_quarantined",
                                                         "reason": "junk"}, follow_redirects=False)
    assert done.status_code == 303
    row = service.store.get_inbound(stored.id)
    assert row is not None and row.status == "discarded"
    assert "Quarantined mail (0)" in client.get("/").text


def test_legal_hold_is_set_and_lifted_through_the_workflow(service: App) -> None:
    from escalations.records.models import LegalHold

    client = client_for(service, Role.COORDINATOR, {"city-and-hackney"})
    ref = refs(service)["city-and-hackney"]
    page = client.get(f"/cases/{ref}")
    token = csrf(page.text)
    r = client.post(f"/cases/{ref}/actions/set_legal_hold", data={"csrf_token": token, "reason": "litigation"},
                    follow_redirects=False)
    assert r.status_code == 303
    case = service.store.case_by_reference(ref)
    assert case is not None
    with service.store.reading() as s:
        hold = s.get(LegalHold, case.id)
        assert hold is not None and hold.set_by == "coordinator@example.org" and hold.reason == "litigation"
    shown = client.get(f"/cases/{ref}")
    assert "Legal hold" in shown.text and "/actions/lift_legal_hold" in shown.text
    again = client.post(f"/cases/{ref}/actions/set_legal_hold", data={"csrf_token": token, "reason": "again"})
    assert again.status_code == 409 and "already on legal hold" in again.text
    client.post(f"/cases/{ref}/actions/lift_legal_hold", data={"csrf_token": token, "reason": "ended"})
    with service.store.reading() as s:
        assert s.get(LegalHold, case.id) is None


def test_forms_download_is_audited(service: App) -> None:
    client = client_for(service, Role.VIEWER, {"city-and-hackney"})
    ref = refs(service)["city-and-hackney"]
    page = client.get(f"/cases/{ref}")
    link = re.search(rf'href="(/cases/{ref}/forms/[a-z-]+\.docx)"', page.text)
    assert link, "no form offered"
    r = client.get(link.group(1))
    assert r.status_code == 200 and r.content[:2] == b"PK" and r.headers["cache-control"] == "no-store"
    assert ref in r.headers["content-disposition"] and not CHILD.search(r.headers["content-disposition"])
    assert ("case.form_download", ref) in [(a.action, a.case_ref) for a in audit(client)]
    assert client.get(f"/cases/{ref}/forms/nonsense.docx").status_code == 404
    other = client_for(service, Role.VIEWER, {"havering"})
    assert other.get(link.group(1)).status_code == 404


def test_reports_page_charts_and_downloads(service: App) -> None:
    client = client_for(service, Role.VIEWER, {"city-and-hackney"})
    r = client.get("/reports", params={"from": "2026-01-01", "to": "2026-12-31"})
    assert r.status_code == 200
    assert "Escalations per month" in r.text and "&lt;5" in r.text  # one case: small-number suppression
    chart = re.search(r'src="(/reports/chart/per_month\.png\?[^"]+)"', r.text)
    assert chart
    png = client.get(chart.group(1).replace("&amp;", "&"))
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    q = {"partnership": "city-and-hackney", "from": "2026-01-01", "to": "2026-12-31"}
    csv_r = client.get("/reports/report.csv", params=q)
    assert csv_r.text.startswith("table,row,column,value") and "per_month" in csv_r.text
    html = client.get("/reports/report.html", params=q)
    assert "<html" in html.text and "attachment" in html.headers["content-disposition"]
    assert client.get("/reports", params={"partnership": "havering"}).status_code == 404
    assert ("report.view") in [a.action for a in audit(client)]


def test_quarantined_mail_is_replayed_by_a_coordinator_only(service: App) -> None:
    stored = service.ingest(b"From: nobody\r\nTo: chscp@hackney.gov.uk\r\n\r\n")
    service.store.quarantine(stored.id, "parse_error\nValueError")
    viewer = client_for(service, Role.VIEWER, {"city-and-hackney"})
    token = csrf(viewer.get("/").text)
    refused = viewer.post(f"/quarantine/{stored.id}", data={"csrf_token": token, "action": "replay_quarantined",
                                                            "reason": "fixed"})
    assert refused.status_code == 403
    other = client_for(service, Role.COORDINATOR, {"havering"})
    assert other.post(f"/quarantine/{stored.id}", data={"csrf_token": csrf(other.get("/").text),
                                                        "action": "replay_quarantined", "reason": "x"}).status_code == 404
    coordinator = client_for(service, Role.COORDINATOR, {"city-and-hackney"})
    r = coordinator.post(f"/quarantine/{stored.id}", data={"csrf_token": csrf(coordinator.get("/").text),
                                                           "action": "replay_quarantined", "reason": "parser fixed"},
                         follow_redirects=False)
    assert r.status_code == 303
    row = service.store.get_inbound(stored.id)
    assert row is not None and row.status == "pending" and row.attempts == 0
    assert "quarantine.replay_quarantined" in [a.action for a in audit(coordinator)]


def test_csv_cells_are_never_formulas(service: App) -> None:
    from escalations.web.pages.cases import _cell

    assert _cell("=HYPERLINK(1)") == "'=HYPERLINK(1)" and _cell("Hackney CSC") == "Hackney CSC"


def test_an_unverified_reply_is_flagged_on_the_case_page(service: App) -> None:
    from email.message import EmailMessage

    ref = refs(service)["city-and-hackney"]
    msg = EmailMessage()
    msg["From"] = "Priya Example <priya.example@example.org>"
    msg["To"] = "chscp@hackney.gov.uk"
    msg["Subject"] = f"Re: [{ref}] Escalation referral received"
    msg["Message-ID"] = "<forged-reply@example.net>"
    msg.set_content("WITHDRAW\nI no longer want this.\n")  # no reply code: kept, never applied
    service.ingest(bytes(msg))
    service.process_pending()
    assert [e for e in _events(service, ref) if e.kind == "reply_not_applied"]
    page = client_for(service, Role.VIEWER, {"city-and-hackney"}).get(f"/cases/{ref}")
    replies = page.text.split('id="replies"', 1)[1].split('id="notes"', 1)[0]
    assert "Not verified" in replies and "priya.example@example.org" in replies
    case = service.store.case_by_reference(ref)
    assert case is not None and case.status != "withdrawn"
