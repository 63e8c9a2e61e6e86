"""The staff pages in a real browser (Playwright driving Debian's chromium) against the real service
(SMTP intake by aiosmtpd, processor, outbox, web server) on loopback: a referral submitted over SMTP
appears on Today; a coordinator opens it, reveals the personal details (audited), adds a note and
escalates; a viewer cannot act; a practitioner sees only their case; another partnership's case is
not found; axe-core finds no serious or critical violation on any page. Screenshots of Today, the
case page and the report are kept in the test's tmp dir and copied to /work/screenshots/."""

from __future__ import annotations

import email
import email.policy
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from escalations.web.accounts import Identity
from escalations.web.roles import Role
from tests.servers import wait_until
from tests.web.conftest import WebService, sign_in_locally, submit

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.servers

DEMO = Path(__file__).resolve().parents[2] / "escalations" / "demo"
SHOTS = Path("/work/screenshots")
CHILD = "Ava Testchild"


def submit_referral(service: WebService, partnership: str = "city-and-hackney") -> str:
    """A demo referral with a Message-ID of its own, over SMTP; returns the case reference."""
    msg = email.message_from_bytes((DEMO / f"{partnership}.eml").read_bytes(), policy=email.policy.default)
    msg.replace_header("Message-ID", f"<web-{secrets.token_hex(6)}@demo.example.org>")
    before = {c.reference for c in service.app.store.list_cases()}
    service.submit(msg.as_bytes(policy=email.policy.SMTP), msg["To"].addresses[0].addr_spec)
    found: list[str] = []

    def opened() -> bool:
        found[:] = [c.reference for c in service.app.store.list_cases() if c.reference not in before
                    and c.partnership == partnership]
        return bool(found)

    wait_until(opened, timeout=30, what="the referral to become a case")
    return found[0]


def check_axe(page: Page, what: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    bad = [v for v in results.response["violations"] if v.get("impact") in ("serious", "critical")]
    assert not bad, f"{what}: " + "; ".join(f"{v['id']}: {v['help']} ({len(v['nodes'])})" for v in bad)


def shot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / name)
    return path


def as_user(page: Page, service: WebService, role: Role, partnerships: set[str],
            case_refs: set[str] | None = None) -> str:
    """A signed-in browser for ``role`` (the session made as sign-in makes it; the sign-in pages
    themselves are tested in test_signin)."""
    email = f"{role.value}-{secrets.token_hex(3)}@council.example"
    token = service.accounts.create_session(Identity(email=email, role=role, partnerships=frozenset(partnerships),
                                                     case_refs=frozenset(case_refs or ())),
                                            method="test", ip="127.0.0.1")
    page.context.add_cookies([{"name": "esc_session", "value": token, "url": service.base_url}])
    return email


def audited(service: WebService, email: str, action: str, ref: str) -> bool:
    return any(a.user_email == email and a.action == action and a.case_ref == ref
               for a in service.accounts.audit_rows())


def test_coordinator_works_a_new_referral(web_service: WebService, page: Page, tmp_path: Path) -> None:
    ref = submit_referral(web_service)
    email, secret = web_service.add_local_user(Role.COORDINATOR)
    assert secret is not None
    sign_in_locally(page, web_service, email, secret)
    page.goto(web_service.base_url + "/")
    assert page.title().startswith("Today")
    new = page.locator("#city-and-hackney-new + p + table")
    assert new.get_by_role("link", name=ref).count() == 1
    check_axe(page, "Today")
    shot(page, tmp_path, "today.png")

    page.get_by_role("link", name=ref).first.click()
    page.wait_for_url(f"**/cases/{ref}")
    assert CHILD not in page.content() and ref in page.title()
    check_axe(page, "case page")
    submit(page, page.get_by_role("button", name="Show personal details"))
    assert CHILD in page.content()
    assert CHILD not in page.title() and CHILD not in page.url and page.url.endswith("/personal-details")
    assert audited(web_service, email, "case.personal_details", ref)
    check_axe(page, "case page with personal details")

    page.goto(web_service.base_url + f"/cases/{ref}")
    with page.expect_download() as download:
        page.locator("#forms + ul a").first.click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name.startswith(ref) and saved.read_bytes()[:2] == b"PK"  # a Word document
    assert audited(web_service, email, "case.form_download", ref)

    page.locator("summary", has_text="Add a note").click()
    page.fill("#text-note", "Phoned the school: they will send the chronology")
    page.fill("#reason-note", "follow-up call")
    submit(page, page.get_by_role("button", name="Add note"))
    assert page.url.endswith(f"/cases/{ref}")
    assert page.get_by_text("Done: add a note.").count() == 1
    assert page.get_by_text("Phoned the school: they will send the chronology").count() >= 1

    before = web_service.app.store.case_by_reference(ref)
    assert before is not None and before.stage is not None
    page.locator("summary", has_text="Escalate now").click()
    page.fill("#reason-escalate", "no reply from the other agency by phone")
    submit(page, page.get_by_role("button", name="Escalate to the next stage"))
    assert page.url.endswith(f"/cases/{ref}")
    case = web_service.app.store.case_by_reference(ref)
    assert case is not None and case.stage == before.stage + 1
    assert audited(web_service, email, "case.action.escalate", ref)
    history = page.locator("#history + table").inner_text()
    assert "Staff: escalate" in history and "Escalated" in history
    shot(page, tmp_path, "case.png")

    for path, what in (("/cases", "cases"), ("/policy", "policy index"), ("/policy/city-and-hackney", "policy"),
                       ("/policy/city-and-hackney?opened_date=2026-11-03&opened_time=10%3A00", "calculator"),
                       ("/reports", "reports")):
        page.goto(web_service.base_url + path)
        check_axe(page, what)
    assert page.locator("img[src^='/reports/chart/per_month.png']").evaluate("i => i.naturalWidth") > 0
    with page.expect_download() as download:
        page.get_by_role("link", name="The figures (CSV)").click()
    assert download.value.suggested_filename.endswith(".csv")
    shot(page, tmp_path, "report.png")


def test_a_viewer_reads_but_cannot_act(web_service: WebService, page: Page) -> None:
    ref = submit_referral(web_service)
    stage = web_service.app.store.case_by_reference(ref).stage  # type: ignore[union-attr]
    as_user(page, web_service, Role.VIEWER, {"city-and-hackney"})
    page.goto(web_service.base_url + f"/cases/{ref}")
    assert page.locator("#actions").count() == 0
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    r = page.request.post(web_service.base_url + f"/cases/{ref}/actions/escalate",
                          form={"csrf_token": token or "", "reason": "trying"})
    assert r.status == 403
    case = web_service.app.store.case_by_reference(ref)
    assert case is not None and case.stage == stage


def test_a_practitioner_sees_only_their_case(web_service: WebService, page: Page) -> None:
    mine, other = submit_referral(web_service), submit_referral(web_service)
    as_user(page, web_service, Role.PRACTITIONER, {"city-and-hackney"}, {mine})
    page.goto(web_service.base_url + "/")
    page.wait_for_url(f"**/cases/{mine}")
    assert page.locator("#actions").count() == 0
    check_axe(page, "practitioner's case page")
    response = page.goto(web_service.base_url + f"/cases/{other}")
    assert response is not None and response.status == 404
    page.goto(web_service.base_url + "/cases")
    assert page.get_by_role("link", name=mine).count() == 1 and page.get_by_role("link", name=other).count() == 0


def test_another_partnerships_case_is_not_found(web_service: WebService, page: Page) -> None:
    theirs = submit_referral(web_service, "havering")
    as_user(page, web_service, Role.COORDINATOR, {"city-and-hackney"})
    response = page.goto(web_service.base_url + f"/cases/{theirs}")
    assert response is not None and response.status == 404
    check_axe(page, "not found")
    page.goto(web_service.base_url + "/cases")
    assert page.get_by_role("link", name=theirs).count() == 0
