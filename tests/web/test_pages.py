"""Practitioners' sign-in links, who sees which case, the audit page, headers, access logs, and
axe-core on the sign-in and audit pages, in Debian's chromium against the real service."""

from __future__ import annotations

import logging
import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import pytest

from escalations.cases.models import Case
from escalations.web.roles import Role
from tests.servers import wait_until
from tests.web.conftest import WebService, session_cookie, sign_in_locally, submit

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.servers

DEMO = Path(__file__).resolve().parents[2] / "escalations" / "demo"


@pytest.fixture(scope="module")
def cases(web_service: WebService) -> dict[str, Case]:
    """The City & Hackney and Havering sample referrals, as cases (raised by different people)."""
    for pid in ("city-and-hackney", "havering"):
        raw = re.sub(rb"\r?\n", b"\r\n", (DEMO / f"{pid}.eml").read_bytes())
        web_service.submit(raw, web_service.app.config.partnerships[pid].primary_mailbox)

    def opened() -> dict[str, Case]:
        return {c.partnership: c for c in web_service.app.store.list_cases()}

    wait_until(lambda: {"city-and-hackney", "havering"} <= set(opened()), timeout=60, what="both cases")
    return opened()


def link_mails(service: WebService, case: Case) -> list[EmailMessage]:
    found = []
    for row in service.app.store.list_outbox():
        if row.template == "web/sign_in_link.txt.j2" and row.case_id == case.id:
            msg = message_from_bytes(row.raw, policy=policy.default)
            assert isinstance(msg, EmailMessage)
            found.append(msg)
    return found


def body(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def request_link(page: Page, service: WebService, reference: str, email: str) -> None:
    page.goto(service.base_url + "/sign-in/practitioner")
    page.fill("#reference", reference)
    page.fill("#email", email)
    submit(page)
    assert "Check your email" in page.inner_text("main")


def test_practitioner_link_shows_only_its_case(page: Page, web_service: WebService, cases: dict[str, Case]) -> None:
    mine, other = cases["city-and-hackney"], cases["havering"]
    assert mine.raised_by_email
    request_link(page, web_service, mine.reference, "someone-else@agency.example")  # not on the case
    request_link(page, web_service, mine.reference.lower(), mine.raised_by_email.upper())
    wait_until(lambda: len(link_mails(web_service, mine)) == 1, what="the sign-in link mail")
    mail = link_mails(web_service, mine)[0]
    assert mail["To"] == mine.raised_by_email.lower()
    assert mine.reference in mail["Subject"]
    link = re.search(r"http://\S+/sign-in/link/\S+", body(mail))
    assert link is not None
    page.goto(link.group(0))
    assert session_cookie(page) is None  # opening the link (a mail scanner would) spends nothing
    page.click("button[type=submit]")
    page.wait_for_url(f"{web_service.base_url}/cases/{mine.reference}")
    assert mine.reference in page.inner_text("h1")
    for path in (f"/cases/{other.reference}", "/cases/XX-2026-9999"):  # another case: as if none existed
        assert page.goto(web_service.base_url + path).status == 404  # type: ignore[union-attr]
    assert page.goto(web_service.base_url + "/audit").status == 403  # type: ignore[union-attr]
    page.goto(web_service.base_url + "/")
    assert page.url == f"{web_service.base_url}/cases/{mine.reference}"
    audit = web_service.accounts.audit_rows()
    assert any(r.action == "case.view" and r.case_ref == mine.reference and r.role == "practitioner" for r in audit)
    assert [r.user_email for r in audit if r.action == "sign_in_link.sent" and r.case_ref == mine.reference] == [
        mine.raised_by_email.lower()]  # the address not on the case got nothing, and no row
    fresh = page.context.browser.new_context()  # type: ignore[union-attr]
    try:  # the link works once
        again = fresh.new_page()
        again.goto(link.group(0))
        assert "cannot be used" in again.inner_text("h1")
    finally:
        fresh.close()


def test_staff_see_only_their_partnerships_cases(page: Page, web_service: WebService, cases: dict[str, Case]) -> None:
    email, secret = web_service.add_local_user(Role.VIEWER, ("city-and-hackney",))
    assert secret is not None
    sign_in_locally(page, web_service, email, secret)
    page.wait_for_url(web_service.base_url + "/")
    assert page.goto(f"{web_service.base_url}/cases/{cases['city-and-hackney'].reference}").status == 200  # type: ignore[union-attr]
    assert page.goto(f"{web_service.base_url}/cases/{cases['havering'].reference}").status == 404  # type: ignore[union-attr]


def test_admin_audit_page_lists_and_filters(page: Page, web_service: WebService, cases: dict[str, Case]) -> None:
    viewer, vsecret = web_service.add_local_user(Role.VIEWER, ("havering",))
    assert vsecret is not None
    sign_in_locally(page, web_service, viewer, vsecret)
    page.wait_for_url(web_service.base_url + "/")
    page.goto(f"{web_service.base_url}/cases/{cases['havering'].reference}")
    assert page.goto(web_service.base_url + "/audit").status == 403  # type: ignore[union-attr]
    page.context.clear_cookies()
    admin, secret = web_service.add_local_user(Role.ADMIN, ("havering",))
    assert secret is not None
    sign_in_locally(page, web_service, admin, secret)
    page.wait_for_url(web_service.base_url + "/")
    page.click("text=Audit trail")
    page.wait_for_url(web_service.base_url + "/audit")
    assert viewer in page.inner_text("table")
    page.fill("#user_email", viewer)
    page.fill("#case_ref", cases["havering"].reference)
    submit(page, "text=Filter")
    rows = page.locator("tbody tr")
    assert rows.count() == 1
    assert "case.view" in rows.first.inner_text()
    assert viewer not in page.url  # filters are posted, not put in the address
    assert page.title() == "Audit trail – Resolving professional differences"


def test_security_headers_and_no_caching(web_service: WebService) -> None:
    r = httpx2.get(web_service.base_url + "/sign-in")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    assert "server" not in r.headers
    assert "<script" not in r.text and "style=" not in r.text
    css = httpx2.get(web_service.base_url + "/static/app.css")
    assert css.status_code == 200 and "max-age" in css.headers["cache-control"]


def test_no_personal_data_in_access_logs(page: Page, web_service: WebService, cases: dict[str, Case],
                                         caplog: pytest.LogCaptureFixture) -> None:
    child = "Zebedee Quartermaine"
    email, secret = web_service.add_local_user(Role.ADMIN, ("city-and-hackney",))
    assert secret is not None
    caplog.set_level(logging.INFO)
    sign_in_locally(page, web_service, email, secret)
    page.wait_for_url(web_service.base_url + "/")
    ref = cases["city-and-hackney"].reference
    page.goto(f"{web_service.base_url}/cases/{ref}?child={child.replace(' ', '+')}&dob=2015-03-04")
    page.goto(f"{web_service.base_url}/audit?q={child.replace(' ', '%20')}")
    page.goto(f"{web_service.base_url}/sign-in/link/secret-link-token-value")
    # the access line is written after the response has gone, so page.goto can return before it: wait for
    # the last request's line (by its address's prefix, which both the template and a leaked address carry)
    def access_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "escalations.web.access"]

    wait_until(lambda: any("/sign-in/link/" in line for line in access_lines()), what="the link's access line")
    access = access_lines()
    # the route's template, not the address asked for; in whichever format an earlier test in this
    # worker process left the logging in (JSON or console: structlog's configuration is global)
    assert any("/cases/{ref}" in line for line in access), access
    assert any("/sign-in/link/{token}" in line for line in access), access
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret_value in ("Zebedee", "Quartermaine", "2015-03-04", "secret-link-token-value", email, ref):
        assert secret_value not in "\n".join(access), secret_value
    for secret_value in ("Zebedee", "Quartermaine", "2015-03-04", "secret-link-token-value"):
        assert secret_value not in everything, secret_value
    assert not [r for r in caplog.records if r.name == "uvicorn.access"]


def axe_serious(page: Page) -> list[dict[str, Any]]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": [
        "wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]}})
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]]}
            for v in results.response["violations"] if v["impact"] in ("serious", "critical")]


def test_axe_on_sign_in_pages_and_the_audit_page(page: Page, web_service: WebService, cases: dict[str, Case]) -> None:
    base = web_service.base_url
    page.set_content('<html><body><img src="/static/none.png"><input type="text"></body></html>')
    assert {v["id"] for v in axe_serious(page)} >= {"image-alt", "label"}  # the check itself works
    found: dict[str, list[dict[str, Any]]] = {}
    for path in ("/sign-in", "/sign-in/practitioner", "/sign-in/link/not-a-link"):
        page.goto(base + path)
        found[path] = axe_serious(page)
    page.goto(base + "/sign-in")
    submit(page)  # empty: the error summary
    found["/sign-in (errors)"] = axe_serious(page)
    email, _ = web_service.add_local_user(Role.ADMIN, ("city-and-hackney",), enrolled=False)
    page.fill("#email", email)
    page.fill("#password", "a long test password")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/sign-in/enrol$"))
    found["/sign-in/enrol"] = axe_serious(page)
    secret = page.inner_text("#totp-secret").replace(" ", "")
    import pyotp

    page.fill("#code", pyotp.TOTP(secret).now())
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    found["/"] = axe_serious(page)
    page.goto(base + "/audit")
    found["/audit"] = axe_serious(page)
    page.goto(f"{base}/cases/{cases['havering'].reference}")  # 404 page
    found["404"] = axe_serious(page)
    assert {k: v for k, v in found.items() if v} == {}
