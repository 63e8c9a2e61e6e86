"""Local accounts' secrets: argon2id password hashes (argon2-cffi) and TOTP codes (pyotp, RFC 6238)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_hasher = PasswordHasher()
#: Verified against when the address has no account, so the answer takes as long either way.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
#: The issuer shown in authenticator apps.
TOTP_ISSUER = "Escalations"
MIN_PASSWORD_LENGTH = 12


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_password() -> str:
    """A random first password for ``users add`` (printed once)."""
    return secrets.token_urlsafe(15)


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=TOTP_ISSUER)


def totp_qr_svg(uri: str) -> str:
    """The enrolment QR code as inline SVG markup (no image file, no script)."""
    return str(segno.make(uri, error="m").svg_inline(scale=4, title="QR code for your authenticator app"))


def totp_step(secret: str, code: str, at: float | None = None) -> int | None:
    """The time step a 6-digit code is valid for (this one or either neighbour), else None."""
    code = "".join(code.split())
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    now = time.time() if at is None else at
    for drift in (0, -1, 1):
        when = now + drift * totp.interval
        if secrets.compare_digest(totp.at(when), code):
            return int(when // totp.interval)
    return None


class TotpSealer:
    """TOTP secrets are kept sealed (AES-256-GCM, a key derived from the service's secret key, bound
    to the account's row): a copy of the database alone gives nobody anyone's second factor."""

    PREFIX = "v1:"

    def __init__(self, service_secret: bytes) -> None:
        key = hmac.new(service_secret, b"escalations web: TOTP secrets", hashlib.sha256).digest()
        self._aead = AESGCM(key)

    def seal(self, secret: str, user_id: int) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, secret.encode("ascii"), f"web_user:{user_id}".encode())
        return self.PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def unseal(self, stored: str | None, user_id: int) -> str | None:
        """The secret, or None if there is none or it does not open with this key (another key, or a row's
        value copied to another)."""
        if not stored or not stored.startswith(self.PREFIX):
            return None
        raw = base64.urlsafe_b64decode(stored[len(self.PREFIX):])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], f"web_user:{user_id}".encode()).decode("ascii")
        except (InvalidTag, ValueError):
            return None
