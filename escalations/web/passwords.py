"""Local accounts' secrets: argon2id password hashes (argon2-cffi) and TOTP codes (pyotp, RFC 6238).

Nothing is hashed, and none of argon2-cffi, pyotp, segno or cryptography is imported, when this
module is imported: the web interface starts inside ``escalations run``, and one argon2id hash takes
its memory cost (64 MiB by default) for a moment, so the dummy hash made at import was the whole
process's peak. Each library is imported, and the dummy hash made, at the first use.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from argon2 import PasswordHasher
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM


@functools.cache
def _hasher() -> PasswordHasher:
    from argon2 import PasswordHasher

    return PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the address has no account, so the answer takes as long either way."""
    return _hasher().hash(secrets.token_urlsafe(16))


#: The issuer shown in authenticator apps.
TOTP_ISSUER = "Escalations"
MIN_PASSWORD_LENGTH = 12


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher().hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

    dummy = _dummy_hash()  # made on the first call whether or not there is an account: the same time either way
    try:
        return _hasher().verify(password_hash or dummy, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_password() -> str:
    """A random first password for ``users add`` (printed once)."""
    return secrets.token_urlsafe(15)


def new_totp_secret() -> str:
    import pyotp

    return pyotp.random_base32()


def totp_uri(secret: str, email: str) -> str:
    import pyotp

    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=TOTP_ISSUER)


def totp_qr_svg(uri: str) -> str:
    """The enrolment QR code as inline SVG markup (no image file, no script)."""
    import segno

    return str(segno.make(uri, error="m").svg_inline(scale=4, title="QR code for your authenticator app"))


def totp_step(secret: str, code: str, at: float | None = None) -> int | None:
    """The time step a 6-digit code is valid for (this one or either neighbour), else None."""
    code = "".join(code.split())
    if not (code.isdigit() and len(code) == 6):
        return None
    import pyotp

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
        self._key = hmac.new(service_secret, b"escalations web: TOTP secrets", hashlib.sha256).digest()

    @functools.cached_property
    def _aead(self) -> AESGCM:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(self._key)

    def seal(self, secret: str, user_id: int) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, secret.encode("ascii"), f"web_user:{user_id}".encode())
        return self.PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def unseal(self, stored: str | None, user_id: int) -> str | None:
        """The secret, or None if there is none or it does not open with this key (another key, or a row's
        value copied to another)."""
        if not stored or not stored.startswith(self.PREFIX):
            return None
        from cryptography.exceptions import InvalidTag

        raw = base64.urlsafe_b64decode(stored[len(self.PREFIX):])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], f"web_user:{user_id}".encode()).decode("ascii")
        except (InvalidTag, ValueError):
            return None
