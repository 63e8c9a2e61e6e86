"""The real service for the web tests: an App with its SMTP intake (aiosmtpd) and the web server
on free loopback ports, the local OpenID provider, and one Debian chromium under Playwright.

The service and the browser are started once per session (the browser is what is slow); each test
gets a new browser context (no cookies) and uses addresses of its own."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import smtplib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyotp
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from escalations.app import App, build_app
from escalations.settings import Settings, WebSettings
from escalations.web import audit, pages
from escalations.web.accounts import Accounts
from escalations.web.auth import require_case
from escalations.web.context import application
from escalations.web.passwords import hash_password
from escalations.web.roles import Role
from escalations.web.server import WebServer
from escalations.web.templating import render
from tests.conftest import CONFIG_DIR
from tests.servers import free_port, unavailable, wait_until
from tests.web.oidc_provider import LocalOidcProvider, local_provider

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page
    from playwright.sync_api import Response as PlaywrightResponse

CHROMIUM = Path("/usr/bin/chromium")
#: app roles of the test provider -> our roles (as an Entra app registration's roles would be)
ROLE_CLAIMS = {"Escalations.Viewer": Role.VIEWER, "Escalations.Coordinator": Role.COORDINATOR,
               "Escalations.Admin": Role.ADMIN}
PASSWORD = "a long test password"


@dataclass
class WebService:
    app: App
    server: WebServer
    base_url: str

    @property
    def accounts(self) -> Accounts:
        accounts = self.server.asgi.state.web.accounts
        assert isinstance(accounts, Accounts)
        return accounts

    def add_local_user(self, role: Role = Role.COORDINATOR, partnerships: tuple[str, ...] = ("city-and-hackney",),
                       *, enrolled: bool = True) -> tuple[str, str | None]:
        """A new local account (a fresh address each time); enrolled: its TOTP secret, else None."""
        email = f"{role.value}-{secrets.token_hex(4)}@council.example"
        user = self.accounts.add_user(email, role, partnerships, password_hash=hash_password(PASSWORD))
        if not enrolled:
            return email, None
        assert user.id is not None
        secret = pyotp.random_base32()
        self.accounts.set_pending_totp(user.id, secret)
        self.accounts.accept_totp_step(user.id, 0, confirm=True)
        return email, secret

    def submit(self, raw: bytes, to: str) -> None:
        assert self.app.smtp_port is not None
        with smtplib.SMTP("127.0.0.1", self.app.smtp_port, timeout=30) as c:
            c.sendmail("practitioner@agency.example", [to], raw)


def minimal_case_page(request: Request) -> Response:
    """Who may see a case, as the real case page decides it (require_case), and nothing of the case."""
    ref = request.path_params["ref"]
    case = application(request).store.case_by_reference(ref)
    user = require_case(request, ref, case.partnership if case is not None else None)
    audit.record(request, user, "case.view", case_ref=ref)
    return render(request, "error.html.j2", {"heading": f"Case {ref}", "lines": []})


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[LocalOidcProvider]:
    yield from local_provider()


@pytest.fixture(scope="session")
def web_service(tmp_path_factory: pytest.TempPathFactory, oidc_provider: LocalOidcProvider) -> Iterator[WebService]:
    data = tmp_path_factory.mktemp("web-service")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    oidc_provider.allow_redirect(base + "/sign-in/oidc/callback")
    web = WebSettings(bind=f"127.0.0.1:{port}", public_url=base, lockout_failures=3,
                      oidc=oidc_provider.settings(role_claims=ROLE_CLAIMS, partnerships=["city-and-hackney"]))
    settings = Settings(data_dir=data, config_dir=CONFIG_DIR, smtp_listen_port=0, parse_in_worker=False, web=web,
                        tick_interval_seconds=3600)
    app = build_app(settings)
    if not any(getattr(r, "path", None) == "/cases/{ref}" for r in pages.routes):
        pages.routes.append(Route("/cases/{ref}", minimal_case_page))  # until the pages' own case page
    server = WebServer(app, settings)
    stop = threading.Event()
    started = threading.Event()
    runner = threading.Thread(target=app.run, args=(stop,), kwargs={
        "on_started": lambda _app: started.set(), "components": {"web": server.run}}, name="service", daemon=True)
    runner.start()
    wait_until(lambda: started.is_set() and server.started.is_set(), what="the service and its web server")
    yield WebService(app=app, server=server, base_url=base)
    stop.set()
    runner.join(timeout=30)
    assert not runner.is_alive(), "the service (and its web server) did not stop with its stop event"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        unavailable("Debian's chromium is not installed (apt-get install chromium)")
    pw = sync_playwright().start()
    try:
        # Root (CI containers) cannot use chromium's sandbox.
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"] if os.geteuid() == 0 else [])
    except Exception as exc:
        pw.stop()
        unavailable(f"chromium would not start under Playwright ({type(exc).__name__})")
    yield b
    b.close()
    pw.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    p = context.new_page()
    yield p
    context.close()


def session_cookie(page: Page) -> dict[str, Any] | None:
    return next((c for c in page.context.cookies() if c["name"] in ("esc_session", "__Host-esc_session")), None)


def submit(page: Page, target: str | Locator = "button[type=submit]") -> PlaywrightResponse:
    """Click what posts a form and return once the page it leads to has loaded, with its response.

    A form posted back to its own address (an error shown again, a filter, a case action redirecting
    to the case) leaves the URL as it was, so `wait_for_url` would return at once and the next read
    could see the old page, or the old page half unloaded: an empty table in one CI run."""
    with page.expect_navigation() as navigation:
        (page.locator(target) if isinstance(target, str) else target).click()
    response = navigation.value
    assert response is not None
    return response


def sign_in_locally(page: Page, service: WebService, email: str, secret: str, password: str = PASSWORD) -> None:
    page.goto(service.base_url + "/sign-in")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/sign-in/code$"))
    page.fill("#code", pyotp.TOTP(secret).now())
    page.click("button[type=submit]")
