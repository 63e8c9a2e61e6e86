"""Token providers (escalations/mailer/oauth.py) against the loopback token endpoint (tests/servers/oauth.py):
msal for Microsoft 365 app-only, google-auth for a service account, the refresh grant with rotation."""

from __future__ import annotations

import json
import stat
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from escalations.mailer.oauth import (
    AccessToken,
    CachedTokenProvider,
    TokenError,
    provider_for,
    secret_expiry_note,
    token_claims,
    warn_if_secret_expiring,
)
from escalations.settings import AuthSettings, MailboxSettings
from tests.servers.oauth import OAuthServer

pytestmark = [pytest.mark.servers, pytest.mark.timeout(60)]


def token_of(auth: AuthSettings, user: str = "watcher") -> AccessToken:
    provider = provider_for(auth, user, account="hackney")
    assert provider is not None
    return provider.token()


# ---- settings ----------------------------------------------------------------------------------


def test_auth_block_names_secrets_and_never_holds_one() -> None:
    with pytest.raises(ValidationError, match="client_secret"):
        AuthSettings.model_validate({"method": "oauth2_m365", "tenant_id": "t", "client_id": "c",
                                     "client_secret": "inline-secret"})
    with pytest.raises(ValidationError, match="client_secret_env or client_secret_file or certificate_file"):
        AuthSettings.model_validate({"method": "oauth2_m365", "tenant_id": "t", "client_id": "c"})
    m = MailboxSettings.model_validate({"name": "hackney", "host": "outlook.office365.com", "username": "u@x.org",
                                        "auth": {"method": "oauth2_m365", "tenant_id": "t", "client_id": "c",
                                                 "client_secret_env": "HACKNEY_SECRET"}})
    assert m.password is None and m.auth.effective_scope == "https://outlook.office365.com/.default"
    with pytest.raises(ValidationError, match="no password"):
        MailboxSettings.model_validate({"name": "x", "host": "h", "username": "u"})


def test_password_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAVERING_IMAP_PASSWORD", "pw-from-env")
    m = MailboxSettings.model_validate({"name": "havering", "host": "h", "username": "u",
                                        "auth": {"method": "password", "password_env": "HAVERING_IMAP_PASSWORD"}})
    assert m.login_password() == "pw-from-env"
    assert "pw-from-env" not in repr(m)


# ---- Microsoft 365 through msal ------------------------------------------------------------------


def test_m365_client_secret_through_msal(oauth_server: OAuthServer, tmp_path: Path) -> None:
    app = oauth_server.register_app()
    provider = provider_for(oauth_server.m365_auth(app, tmp_path), "watcher", account="hackney")
    assert provider is not None
    first = provider.token()
    assert oauth_server.introspect(first.value)["username"] == "watcher"
    assert token_claims(first.value)["roles"] == ["IMAP.AccessAsApp", "SMTP.SendAsApp"]
    assert first.expires_at > datetime.now(UTC) + timedelta(minutes=50)
    assert provider.token() == first  # cached
    assert oauth_server.grants() == ["client_credentials"]
    forced = provider.token(force_refresh=True)
    assert forced != first and oauth_server.grants() == ["client_credentials"] * 2


def test_m365_certificate_through_msal(oauth_server: OAuthServer, tmp_path: Path) -> None:
    pem, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=escalations-app", "-keyout", str(key), "-out", str(pem)], check=True, capture_output=True)
    both = tmp_path / "app.pem"
    both.write_text(key.read_text() + pem.read_text())
    app = oauth_server.register_app(secret=None, certificate_pem=pem.read_bytes())
    auth = oauth_server.m365_auth(app, tmp_path, certificate_file=both)
    assert auth.client_secret_file is None
    assert oauth_server.introspect(token_of(auth).value)["active"]

    # A certificate the app registration does not know: Entra's "signature validation" refusal.
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=other", "-keyout", str(other / "k.pem"), "-out", str(other / "c.pem")],
                   check=True, capture_output=True)
    wrong = other / "app.pem"
    wrong.write_text((other / "k.pem").read_text() + (other / "c.pem").read_text())
    with pytest.raises(TokenError) as info:
        token_of(oauth_server.m365_auth(app, tmp_path, certificate_file=wrong))
    assert info.value.code == "certificate_refused"


def test_wrong_client_secret_is_a_clear_error(oauth_server: OAuthServer, tmp_path: Path) -> None:
    app = oauth_server.register_app()
    with pytest.raises(TokenError) as info:
        token_of(oauth_server.m365_auth(app, tmp_path, secret="not-the-secret"))
    assert info.value.code == "invalid_client_secret"
    assert "client secret was refused" in info.value.hint and "AADSTS7000215" in info.value.hint
    assert "not-the-secret" not in str(info.value)


def test_wrong_tenant_is_named(oauth_server: OAuthServer, tmp_path: Path) -> None:
    app = oauth_server.register_app()
    auth = oauth_server.m365_auth(app, tmp_path).model_copy(update={"tenant_id": "no-such-tenant"})
    with pytest.raises(TokenError) as info:
        token_of(auth)
    assert info.value.code == "tenant_not_found" and "no-such-tenant" in info.value.hint


def test_token_endpoint_certificate_not_trusted(oauth_server: OAuthServer, tmp_path: Path) -> None:
    app = oauth_server.register_app()
    auth = oauth_server.m365_auth(app, tmp_path).model_copy(update={"ca_file": None})
    with pytest.raises(TokenError) as info:
        token_of(auth)
    assert info.value.code == "token_endpoint_untrusted"


def test_secret_missing_from_environment(oauth_server: OAuthServer, tmp_path: Path) -> None:
    app = oauth_server.register_app()
    auth = oauth_server.m365_auth(app, tmp_path).model_copy(
        update={"client_secret_file": None, "client_secret_env": "ESCALATIONS_TEST_UNSET_SECRET"})
    with pytest.raises(TokenError) as info:
        token_of(auth)
    assert info.value.code == "secret_missing" and "ESCALATIONS_TEST_UNSET_SECRET" in info.value.hint


# ---- Google -------------------------------------------------------------------------------------


def test_google_service_account_jwt_bearer(oauth_server: OAuthServer, tmp_path: Path) -> None:
    key_file = oauth_server.add_service_account(tmp_path)
    auth = AuthSettings(method="oauth2_google_service_account", service_account_file=key_file,  # type: ignore[arg-type]
                        ca_file=oauth_server.cert)
    token = token_of(auth, "lscb@partnership.example.org")
    assert oauth_server.introspect(token.value)["username"] == "lscb@partnership.example.org"
    assert oauth_server.grants() == ["jwt_bearer"]


def test_google_without_domain_wide_delegation(oauth_server: OAuthServer, tmp_path: Path) -> None:
    key_file = oauth_server.add_service_account(tmp_path, delegated_scopes={"https://www.googleapis.com/auth/drive"})
    auth = AuthSettings(method="oauth2_google_service_account", service_account_file=key_file,  # type: ignore[arg-type]
                        ca_file=oauth_server.cert)
    with pytest.raises(TokenError) as info:
        token_of(auth, "lscb@partnership.example.org")
    assert info.value.code == "delegation_not_granted" and "https://mail.google.com/" in info.value.hint


# ---- refresh token ---------------------------------------------------------------------------------


def test_rotated_refresh_token_is_persisted_0600(oauth_server: OAuthServer, tmp_path: Path) -> None:
    rt_file = tmp_path / "hackney.refresh-token"
    first_rt = oauth_server.issue_refresh_token("installed-app", "watcher", client_secret="desktop-secret")
    rt_file.write_text(first_rt + "\n")
    rt_file.chmod(0o644)  # as an administrator might leave it; our rewrite tightens it
    secret = tmp_path / "client.secret"
    secret.write_text("desktop-secret\n")
    auth = AuthSettings(method="oauth2_refresh_token", client_id="installed-app",  # type: ignore[arg-type]
                        client_secret_file=secret, refresh_token_file=rt_file,
                        token_endpoint=oauth_server.token_url, ca_file=oauth_server.cert)
    provider = provider_for(auth, "watcher", account="hackney")
    assert provider is not None

    token = provider.token()
    rotated = rt_file.read_text().strip()
    assert rotated != first_rt and rotated in oauth_server.refresh_tokens
    assert stat.S_IMODE(rt_file.stat().st_mode) == 0o600
    assert oauth_server.introspect(token.value)["username"] == "watcher"

    # The next refresh (a restart, or a forced one) uses the persisted token; the spent one is dead.
    again = provider_for(auth, "watcher", account="hackney")
    assert again is not None and again.token().value != token.value
    assert rt_file.read_text().strip() not in (first_rt, rotated)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left

    rt_file.write_text(first_rt + "\n")  # a spent token restored from an old backup
    with pytest.raises(TokenError) as info:
        provider.token(force_refresh=True)
    assert info.value.code == "refresh_token_refused"


# ---- caching and expiry warnings ------------------------------------------------------------------


def test_cache_refreshes_before_expiry() -> None:
    now = [datetime(2026, 12, 1, 9, 0, tzinfo=UTC)]
    issued: list[AccessToken] = []

    def fetch(force: bool) -> AccessToken:
        issued.append(AccessToken(f"t{len(issued)}", now[0] + timedelta(hours=1)))
        return issued[-1]

    provider = CachedTokenProvider(fetch, account="hackney", now=lambda: now[0])
    assert provider.token().value == "t0"
    now[0] += timedelta(minutes=54)
    assert provider.token().value == "t0"
    now[0] += timedelta(minutes=1, seconds=1)  # within 5 minutes of expiry
    assert provider.token().value == "t1"
    assert provider.token(force_refresh=True).value == "t2"


def test_secret_expiry_is_warned_with_the_mailbox_name_only() -> None:
    auth = AuthSettings(secret_expires_on=date(2026, 12, 20))
    with structlog.testing.capture_logs() as logs:
        assert not warn_if_secret_expiring(auth, "hackney", date(2026, 11, 19))  # 31 days ahead
        assert warn_if_secret_expiring(auth, "hackney", date(2026, 11, 20))
        assert warn_if_secret_expiring(auth, "hackney", date(2026, 12, 21))
        assert not warn_if_secret_expiring(AuthSettings(), "havering", date(2026, 12, 21))
    assert logs == [
        {"event": "oauth.secret_expiring", "account": "hackney", "days_left": 30, "log_level": "warning"},
        {"event": "oauth.secret_expired", "account": "hackney", "days_left": -1, "log_level": "warning"},
    ]
    assert "2026-12-20 (19 days)" in (secret_expiry_note(auth, date(2026, 12, 1)) or "")
    assert secret_expiry_note(auth, date(2026, 11, 1)) is None
    assert "expired" in (secret_expiry_note(auth, date(2027, 1, 1)) or "")


def test_the_service_checks_every_mailbox_and_the_relay(make_app: Any, tmp_path: Path) -> None:
    secret = {"method": "oauth2_m365", "tenant_id": "t", "client_id": "c", "client_secret_env": "X"}
    mailboxes = [MailboxSettings.model_validate({"name": n, "host": "h", "username": "u",
                                                 "auth": {**secret, "secret_expires_on": d}})
                 for n, d in (("hackney", "2026-11-20"), ("sutton", "2027-06-01"))]
    application = make_app(mailboxes=mailboxes)  # the clock says 3 November 2026
    with structlog.testing.capture_logs() as logs:
        assert application.warn_expiring_secrets() == 1
    assert [(e["event"], e["account"], e["days_left"]) for e in logs] == [("oauth.secret_expiring", "hackney", 17)]


def test_token_claims_of_non_jwt() -> None:
    assert token_claims("opaque") == {}
    assert token_claims("a.b.c") == {}
    assert json.dumps(token_claims("x." + "eyJyb2xlcyI6IFtdfQ" + ".y")) == '{"roles": []}'
