"""The outbound relay as councils run it: STARTTLS on 587 or TLS on 465, with AUTH, against a real
aiosmtpd server with a certificate from its own CA."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr

from escalations.mailer.smtp_sender import DeliveryError, SmtpRelaySender
from escalations.settings import RelaySettings
from tests.servers import free_port, unavailable

pytestmark = pytest.mark.servers

RAW = (b"From: chscp@hackney.gov.uk\r\nTo: jo.bloggs@school.example.org\r\nSubject: [CH-2026-0001] test\r\n"
       b"Message-ID: <t1@escalations.invalid>\r\n\r\nbody\r\n")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA)."""
    if shutil.which("openssl") is None:
        unavailable("openssl not installed (a dependency of dovecot-core)")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@dataclass
class Received:
    lock: threading.Lock = field(default_factory=threading.Lock)
    messages: list[tuple[bytes, bool, Any]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            over_tls = session.ssl is not None or server.transport.get_extra_info("sslcontext") is not None
            self.messages.append((envelope.content, over_tls, session.auth_data))
        return "250 OK"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"relay-user", b"s3cret")
    return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)


@pytest.fixture
def relay(certificate: tuple[Path, Path], request: pytest.FixtureRequest) -> Iterator[tuple[int, Received, str]]:
    """``request.param``: "starttls" (587-style, AUTH only after STARTTLS) or "ssl" (465-style)."""
    cert, key = certificate
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    handler = Received()
    port = free_port()
    kwargs: dict[str, Any] = {"authenticator": _authenticator, "auth_require_tls": True}
    if request.param == "ssl":
        # implicit TLS: the whole session is encrypted (aiosmtpd only tracks STARTTLS for auth_require_tls)
        kwargs.update(ssl_context=ctx, auth_require_tls=False)
    else:
        kwargs.update(tls_context=ctx, require_starttls=True)
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port, handler, request.param
    finally:
        controller.stop()


def settings(port: int, security: str, cert: Path | None, password: str = "s3cret") -> RelaySettings:
    return RelaySettings(host="127.0.0.1", port=port, security=security,  # type: ignore[arg-type]
                         username="relay-user", password=SecretStr(password), ca_file=cert, timeout_seconds=10)


@pytest.mark.parametrize("relay", ["starttls", "ssl"], indirect=True)
def test_sends_over_tls_with_auth(relay: tuple[int, Received, str], certificate: tuple[Path, Path]) -> None:
    port, handler, security = relay
    SmtpRelaySender(settings(port, security, certificate[0])).send(
        "chscp@hackney.gov.uk", ["jo.bloggs@school.example.org"], RAW, name_hint="t1")
    ((content, over_tls, auth),) = handler.messages
    assert over_tls and auth == b"relay-user"
    assert b"Message-ID: <t1@escalations.invalid>" in content


@pytest.mark.parametrize("relay", ["starttls"], indirect=True)
def test_wrong_password_is_a_permanent_failure(relay: tuple[int, Received, str], certificate: tuple[Path, Path]) -> None:
    port, handler, _ = relay
    with pytest.raises(DeliveryError) as info:
        SmtpRelaySender(settings(port, "starttls", certificate[0], password="wrong")).send(
            "chscp@hackney.gov.uk", ["jo.bloggs@school.example.org"], RAW, name_hint="t1")
    assert info.value.permanent and "535" in str(info.value)
    assert handler.messages == []


@pytest.mark.parametrize("relay", ["starttls"], indirect=True)
def test_untrusted_certificate_is_refused_and_retried_later(relay: tuple[int, Received, str]) -> None:
    port, handler, _ = relay
    with pytest.raises(DeliveryError) as info:
        SmtpRelaySender(settings(port, "starttls", None)).send(
            "chscp@hackney.gov.uk", ["jo.bloggs@school.example.org"], RAW, name_hint="t1")
    # not the message's fault: the row stays queued until the administrator fixes the trust store
    assert not info.value.permanent and "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert handler.messages == []


@pytest.mark.parametrize("relay", ["starttls"], indirect=True)
def test_plain_auth_is_refused_before_starttls(relay: tuple[int, Received, str], certificate: tuple[Path, Path]) -> None:
    """A relay configured as `none` against a server that requires STARTTLS never leaks the password."""
    port, handler, _ = relay
    with pytest.raises(DeliveryError):
        SmtpRelaySender(settings(port, "none", certificate[0])).send(
            "chscp@hackney.gov.uk", ["jo.bloggs@school.example.org"], RAW, name_hint="t1")
    assert handler.messages == []
