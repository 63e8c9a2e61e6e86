"""Signing in, in Debian's chromium against the real service: OpenID Connect through the local
provider, local accounts with TOTP, redirects, CSRF, session fixation, cookie flags, lockout."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httpx2
import pyotp
import pytest

from escalations.web.roles import Role
from tests.web.conftest import PASSWORD, WebService, session_cookie, sign_in_locally, submit
from tests.web.oidc_provider import LocalOidcProvider

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.servers


def test_oidc_sign_in_lands_on_home_with_the_role_from_the_claims(page: Page, web_service: WebService,
                                                                  oidc_provider: LocalOidcProvider) -> None:
    oidc_provider.sign_in_as("oidc-coord@council.example", roles=["Escalations.Coordinator"])
    page.goto(web_service.base_url + "/")
    assert page.url == web_service.base_url + "/sign-in"
    page.click("text=Sign in with the test provider")
    page.wait_for_url(web_service.base_url + "/")
    assert "signed in as a coordinator" in page.inner_text("main")
    assert "oidc-coord@council.example" in page.inner_text("header")
    assert "City & Hackney" in page.inner_text("header")
    rows = web_service.accounts.audit_rows()
    assert any(r.user_email == "oidc-coord@council.example" and r.action == "sign_in" and r.detail == "oidc"
               for r in rows)


def test_oidc_account_without_a_mapped_role_is_refused(page: Page, web_service: WebService,
                                                       oidc_provider: LocalOidcProvider) -> None:
    oidc_provider.sign_in_as("nobody@council.example", roles=["Something.Else"])
    page.goto(web_service.base_url + "/sign-in/oidc")
    assert "You cannot sign in" in page.inner_text("h1")
    assert session_cookie(page) is None


def test_local_account_with_totp(page: Page, web_service: WebService) -> None:
    email, secret = web_service.add_local_user(Role.VIEWER)
    assert secret is not None
    sign_in_locally(page, web_service, email, secret)
    page.wait_for_url(web_service.base_url + "/")
    assert "signed in as a viewer" in page.inner_text("main")


def test_totp_enrolment_is_shown_once_and_needs_a_code_from_it(page: Page, web_service: WebService) -> None:
    email, _ = web_service.add_local_user(Role.COORDINATOR, enrolled=False)
    page.goto(web_service.base_url + "/sign-in")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/sign-in/enrol$"))
    secret = page.inner_text("#totp-secret").replace(" ", "")
    assert page.locator(".app-qr svg").count() == 1
    page.fill("#code", "000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    submit(page)
    assert "There is a problem" in page.inner_text("main")
    secret = page.inner_text("#totp-secret").replace(" ", "")  # shown again: a new secret
    page.fill("#code", pyotp.TOTP(secret).now())
    page.click("button[type=submit]")
    page.wait_for_url(web_service.base_url + "/")
    user = web_service.accounts.user(email)
    assert user is not None and user.totp_confirmed_at is not None and web_service.accounts.totp_secret(user) == secret
    page.goto(web_service.base_url + "/sign-in/enrol")  # never shown again
    assert page.locator("#totp-secret").count() == 0


def test_unauthenticated_requests_are_sent_to_sign_in(page: Page, web_service: WebService) -> None:
    page.goto(web_service.base_url + "/audit")
    assert page.url == web_service.base_url + "/sign-in"
    r = httpx2.get(web_service.base_url + "/audit", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/sign-in"


def test_forged_csrf_token_is_refused(page: Page, web_service: WebService) -> None:
    email, secret = web_service.add_local_user(Role.COORDINATOR)
    assert secret is not None
    sign_in_locally(page, web_service, email, secret)
    page.wait_for_url(web_service.base_url + "/")
    page.locator(".app-header__sign-out input[name=csrf_token]").evaluate("e => e.value = 'forged'")
    answer = submit(page, ".app-header__sign-out button")
    assert answer.url.endswith("/sign-out") and answer.status == 403
    assert "You cannot do this" in page.inner_text("h1")
    page.goto(web_service.base_url + "/")
    assert "signed in as a coordinator" in page.inner_text("main")  # the forged form changed nothing
    # A form from another site: the browser sends no session cookie (SameSite=Lax) and no token.
    r = page.request.post(web_service.base_url + "/sign-out", form={"csrf_token": ""})
    assert r.status == 403


def test_session_id_changes_on_sign_in_and_a_planted_one_is_not_used(page: Page, web_service: WebService) -> None:
    planted = "attacker-chosen-session-value"
    page.context.add_cookies([{"name": "esc_session", "value": planted, "url": web_service.base_url}])
    email, secret = web_service.add_local_user(Role.ADMIN)
    assert secret is not None
    sign_in_locally(page, web_service, email, secret)
    page.wait_for_url(web_service.base_url + "/")
    cookie = session_cookie(page)
    assert cookie is not None and cookie["value"] != planted
    assert web_service.accounts.load_session(planted) is None
    assert httpx2.get(web_service.base_url + "/", cookies={"esc_session": planted}).status_code == 303
    # The same account signing in again elsewhere: another new id; both sessions are its own.
    other = page.context.browser.new_context()  # type: ignore[union-attr]
    try:
        second = other.new_page()
        email2, secret2 = web_service.add_local_user(Role.VIEWER)
        assert secret2 is not None
        sign_in_locally(second, web_service, email2, secret2)
        second.wait_for_url(web_service.base_url + "/")
        again = session_cookie(second)
        assert again is not None and again["value"] not in (cookie["value"], planted)
    finally:
        other.close()


def test_cookie_flags(page: Page, web_service: WebService) -> None:
    email, secret = web_service.add_local_user(Role.VIEWER)
    assert secret is not None
    sign_in_locally(page, web_service, email, secret)
    page.wait_for_url(web_service.base_url + "/")
    cookie = session_cookie(page)
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/"
    assert page.evaluate("document.cookie") == ""  # no script can read either cookie


def test_lockout_after_repeated_failures(page: Page, web_service: WebService) -> None:
    email, secret = web_service.add_local_user(Role.COORDINATOR)
    assert secret is not None
    page.goto(web_service.base_url + "/sign-in")
    for _ in range(3):  # web.lockout_failures is 3 here
        page.fill("#email", email)
        page.fill("#password", "not the password")
        submit(page)
        assert "Enter a correct email address and password" in page.inner_text(".app-error-summary")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)  # right, but locked
    answer = submit(page)
    assert answer.url.endswith("/sign-in") and answer.request.method == "POST" and answer.status == 429
    assert "Too many failed attempts" in page.inner_text(".app-error-summary")
    assert session_cookie(page) is None
