"""`escalations users`, `audit list` and `web`, and the cookies a site on https gets."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from escalations.app import build_app
from escalations.cli import app
from escalations.settings import Settings, WebSettings
from escalations.web.accounts import Accounts
from escalations.web.app import create_web_app
from escalations.web.passwords import verify_password
from tests.conftest import CONFIG_DIR

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"ESCALATIONS_DATA_DIR": str(tmp_path / "var"), "ESCALATIONS_CONFIG": str(CONFIG_DIR),
            "ESCALATIONS_DATABASE_URL": ""}


def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout + result.stderr


def accounts_for(tmp_path: Path) -> Accounts:
    settings = Settings(data_dir=tmp_path / "var", config_dir=CONFIG_DIR, database_url=None)
    application = build_app(settings)
    return Accounts(application.store.engine, application.store.lease_clock, settings.web,
                    service_secret=settings.token_secret())


def test_users_add_list_disable_reset(env: dict[str, str], tmp_path: Path) -> None:
    code, out = cli(env, "users", "add", "Ann@Council.example", "--role", "coordinator", "--partnership", "havering")
    assert code == 0, out
    password = re.search(r"first password \(shown once\): (\S+)", out)
    assert password is not None
    user = accounts_for(tmp_path).user("ann@council.example")
    assert user is not None and user.partnerships == ["havering"] and user.role == "coordinator"
    assert verify_password(user.password_hash, password.group(1))
    assert cli(env, "users", "add", "ann@council.example", "--role", "viewer")[0] == 1  # exists
    code, out = cli(env, "users", "add", "bob@council.example", "--role", "viewer", "--partnership", "nowhere")
    assert code == 2 and "no partnership nowhere" in out
    assert cli(env, "users", "add", "pat@agency.example", "--role", "practitioner")[0] == 2
    code, out = cli(env, "users", "add", "carol@council.example", "--role", "admin", "--oidc")
    assert code == 0 and "password" not in out
    code, out = cli(env, "users", "list", "--json")
    rows = {r["email"]: r for r in json.loads(out)}
    assert rows["carol@council.example"]["sign_in"] == "OpenID Connect"
    assert sorted(rows["carol@council.example"]["partnerships"]) == sorted(
        p.stem for p in (CONFIG_DIR / "partnerships").glob("*.yaml"))  # none named: every one
    assert rows["ann@council.example"]["sign_in"] == "password (TOTP not set up)"
    code, out = cli(env, "users", "reset", "ann@council.example")
    new = re.search(r"\(shown once\): (\S+)", out)
    assert code == 0 and new is not None and new.group(1) != password.group(1)
    assert cli(env, "users", "disable", "ann@council.example")[0] == 0
    assert json.loads(cli(env, "users", "list", "--json")[1])[0]["disabled"] is True
    assert cli(env, "users", "disable", "nobody@council.example")[0] == 1


def test_audit_list_filters(env: dict[str, str], tmp_path: Path) -> None:
    a = accounts_for(tmp_path)
    a.audit(user_email="ann@council.example", role="coordinator", action="case.view", case_ref="CH-2026-0001",
            ip="10.0.0.1", route="/cases/{ref}")
    a.audit(user_email="bob@council.example", role="viewer", action="case.view", case_ref="HAV-2026-0001")
    code, out = cli(env, "audit", "list", "--case", "ch-2026-0001", "--json")
    rows = json.loads(out)
    assert code == 0 and [(r["user"], r["case"], r["ip"]) for r in rows] == [
        ("ann@council.example", "CH-2026-0001", "10.0.0.1")]
    rows = json.loads(cli(env, "audit", "list", "--user", "BOB@council.example", "--json")[1])
    assert [r["case"] for r in rows] == ["HAV-2026-0001"]
    code, out = cli(env, "audit", "list")
    assert code == 0 and "Audit trail" in out


def test_web_on_a_port_in_use_is_one_sentence(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = cli(env, "web", "--bind", f"127.0.0.1:{port}")
    assert code == 2
    assert f"ESCALATIONS_WEB__BIND: cannot listen on 127.0.0.1:{port}" in out
    assert "Traceback" not in out


def test_cookies_on_https_are_secure_and_host_only(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var", config_dir=CONFIG_DIR,
                        web=WebSettings(public_url="https://escalations.council.example"))
    application = build_app(settings)
    web = create_web_app(application, settings)
    client = TestClient(web, base_url="https://escalations.council.example", follow_redirects=False)
    page = client.get("/sign-in")
    assert page.headers["strict-transport-security"].startswith("max-age=")
    pre = page.headers["set-cookie"]
    assert pre.startswith("__Host-esc_pre=") and "secure" in pre.lower() and "httponly" in pre.lower()
    assert "samesite=lax" in pre.lower()
    # a session cookie made the way sign-in makes it
    from starlette.requests import Request
    from starlette.responses import Response

    from escalations.web.accounts import Identity
    from escalations.web.roles import Role
    from escalations.web.sessions import start_session

    scope = {"type": "http", "app": web, "headers": [], "session": {}, "method": "GET", "path": "/"}
    response = Response()
    start_session(Request(scope), response, Identity("ann@council.example", Role.VIEWER, frozenset({"sutton"})),
                  method="local")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("__Host-esc_session=")
    for flag in ("Secure", "HttpOnly", "SameSite=lax", "Path=/"):
        assert flag in cookie
    assert "Domain" not in cookie
    application.close()


@pytest.mark.servers
def test_run_demo_serves_the_web_interface_and_prints_a_working_sign_in(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx2

    from tests.servers import free_port

    env = {**os.environ, "ESCALATIONS_DATA_DIR": str(tmp_path / "var"), "ESCALATIONS_CONFIG": str(CONFIG_DIR),
           "ESCALATIONS_WEB__BIND": f"127.0.0.1:{free_port()}"}
    env.pop("ESCALATIONS_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "escalations", "run", "--demo", "--smtp-port", str(free_port())],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("demo sign-in:" in line for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        text = "".join(lines).replace("\n", " ")
        found = re.search(r"demo sign-in: (http://\S+)/sign-in as (\S+) with\s+password (\S+)", text)
        assert found is not None, text
        base, email, password = found.groups()
        with httpx2.Client(base_url=base, follow_redirects=False) as client:
            page = client.get("/sign-in")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token is not None
            r = client.post("/sign-in", data={"csrf_token": token.group(1), "email": email, "password": password})
            assert (r.status_code, r.headers["location"]) == (303, "/sign-in/enrol")  # then the authenticator app
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("ESCALATIONS_WEB__BIND", "nonsense", "ESCALATIONS_WEB__BIND: must be host:port"),
    ("ESCALATIONS_WEB__PUBLIC_URL", "https://council.example/escalations", "ESCALATIONS_WEB__PUBLIC_URL: must be"),
    ("ESCALATIONS_WEB__OIDC__ISSUER", "https://login.example", "ESCALATIONS_WEB__OIDC__CLIENT_ID: required"),
])
def test_web_setting_mistakes_are_one_sentence(env: dict[str, str], variable: str, value: str, says: str) -> None:
    code, out = cli({**env, variable: value}, "users", "list")
    assert code == 2 and says in out and "Traceback" not in out


def test_an_unset_oidc_secret_is_one_sentence(env: dict[str, str]) -> None:
    code, out = cli({**env, "ESCALATIONS_WEB__OIDC__ISSUER": "https://login.example",
                     "ESCALATIONS_WEB__OIDC__CLIENT_ID": "abc",
                     "ESCALATIONS_WEB__OIDC__CLIENT_SECRET_ENV": "ESCALATIONS_TEST_UNSET_SECRET"},
                    "web", "--bind", "127.0.0.1:0")
    assert code == 2 and "Traceback" not in out
    assert "ESCALATIONS_WEB__OIDC__CLIENT_SECRET_ENV: web.oidc client secret: environment variable " \
           "ESCALATIONS_TEST_UNSET_SECRET is not set" in out


def test_the_oidc_example_in_docs_web_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "web.md").read_text()
    found = re.search(r"export ESCALATIONS_WEB__OIDC='(.*?)'", text, re.S)
    assert found is not None
    monkeypatch.setenv("ESCALATIONS_WEB__OIDC", found.group(1))
    oidc = Settings().web.oidc
    assert oidc is not None and oidc.role_claims["Escalations.Coordinator"] == "coordinator"
