"""A live check of one mailbox's sign-in (``escalations mailbox test NAME``): connect, authenticate,
look at the folder, and when anything fails say why in words an administrator can act on.

Read-only: the folder is EXAMINEd, nothing is fetched, flagged or stored.
"""

from __future__ import annotations

import contextlib
import imaplib
import socket
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from escalations.mailer.oauth import TokenError, TokenProvider, provider_for, secret_expiry_note, token_claims
from escalations.settings import AuthMethod, MailboxSettings

IMAP_ROLE = "IMAP.AccessAsApp"


@dataclass
class MailboxCheck:
    name: str
    host: str
    port: int
    security: str
    auth_method: str
    folder: str
    ok: bool = False
    #: A short code for scripts and logs, and one or two lines of explanation.
    code: str | None = None
    problem: str | None = None
    token_expires_at: datetime | None = None
    messages: int | None = None
    uidvalidity: int | None = None
    idle: bool | None = None
    #: Messages after the stored cursor: what the watcher would fetch next.
    to_fetch: int | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.__dict__.items()}


class _Failed(Exception):
    def __init__(self, code: str, problem: str) -> None:
        super().__init__(code)
        self.code = code
        self.problem = problem


def check_mailbox(mailbox: MailboxSettings, cursor: tuple[int, int] | None, *,
                  tokens: TokenProvider | None = None, subaddressing: bool = True) -> MailboxCheck:
    """``cursor``: the store's (UIDVALIDITY, last stored UID) for this mailbox's folder, if any."""
    m = mailbox
    result = MailboxCheck(m.name, m.host, m.port, m.security, m.auth.method.value, m.folder)
    note = secret_expiry_note(m.auth, datetime.now(UTC).date())
    if note:
        result.notes.append(note)
    if tokens is None:
        tokens = provider_for(m.auth, m.username, account=m.name)
    try:
        _run(result, m, cursor, tokens, subaddressing)
        result.ok = True
    except _Failed as exc:
        result.code, result.problem = exc.code, exc.problem
    return result


def _run(result: MailboxCheck, m: MailboxSettings, cursor: tuple[int, int] | None,
         tokens: TokenProvider | None, subaddressing: bool) -> None:
    token = None
    if tokens is not None:
        try:
            token = tokens.token(force_refresh=True)  # a live check: never a cached answer
        except TokenError as exc:
            raise _Failed(exc.code, f"No token from the identity provider: {exc.hint}.") from exc
        result.token_expires_at = token.expires_at
    client = _connect(m)
    try:
        _login(client, m, token.value if token else None)
        result.idle = client.has_capability("IDLE")
        try:
            info = client.select_folder(m.folder, readonly=True)
        except imaplib.IMAP4.error as exc:
            raise _Failed("folder_missing", f"Signed in, but the folder {m.folder!r} cannot be opened: "
                                            "check the mailbox's `folder` (names are case-sensitive).") from exc
        result.messages = int(info.get(b"EXISTS", 0))
        result.uidvalidity = int(info[b"UIDVALIDITY"]) if b"UIDVALIDITY" in info else None
        last = cursor[1] if cursor is not None and cursor[0] == result.uidvalidity else 0
        if cursor is not None and cursor[0] != result.uidvalidity:
            result.notes.append("UIDVALIDITY changed since the last stored message: the folder will be re-read "
                                "(already stored mail is recognised and not stored twice)")
        found = [int(u) for u in client.search(["UID", f"{last + 1}:*"])] if result.messages else []
        result.to_fetch = sum(1 for u in found if u > last)
        if subaddressing:
            result.notes.append(_subaddressing_note(client, m.username))
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def _connect(m: MailboxSettings) -> IMAPClient:
    where = f"{m.host}:{m.port}"
    ctx = ssl.create_default_context()
    if not m.verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        client = IMAPClient(m.host, m.port, ssl=m.security == "ssl", ssl_context=ctx,
                            timeout=m.response_timeout_seconds)
        if m.security == "starttls":
            client.starttls(ctx)
        return client
    except ssl.SSLCertVerificationError as exc:
        raise _Failed("certificate_not_trusted",
                      f"The certificate of {where} is not trusted ({exc.verify_message}): an inspecting proxy or "
                      "an in-house CA must be added to the system's trust store.") from exc
    except ssl.SSLError as exc:
        raise _Failed("tls_failed", f"TLS with {where} failed ({exc.reason}): is `security` right for this port "
                                    "(ssl for 993, starttls for 143)?") from exc
    except ConnectionRefusedError as exc:
        raise _Failed("connection_refused", f"Connection refused by {where}: wrong host or port, "
                                            "or the server is not running.") from exc
    except socket.gaierror as exc:
        raise _Failed("host_not_found", f"The host name {m.host} cannot be resolved.") from exc
    except TimeoutError as exc:
        raise _Failed("timeout", f"No answer from {where} within {m.response_timeout_seconds:g} s "
                                 "(a firewall dropping the connection?).") from exc
    except (OSError, imaplib.IMAP4.error) as exc:
        raise _Failed("connection_failed", f"Cannot talk IMAP with {where} ({type(exc).__name__}).") from exc


def _login(client: IMAPClient, m: MailboxSettings, token: str | None) -> None:
    try:
        if token is None:
            client.login(m.username, m.login_password())
        else:
            client.oauth2_login(m.username, token)
    except ValueError as exc:  # the password's variable or file
        raise _Failed("secret_missing", f"{exc}.") from exc
    except LoginError as exc:
        raise _refused(m, token) from exc
    except (OSError, imaplib.IMAP4.error) as exc:
        raise _Failed("login_failed", f"The server ended the sign-in ({type(exc).__name__}).") from exc


def _refused(m: MailboxSettings, token: str | None) -> _Failed:
    if token is None:
        return _Failed("authentication_failed",
                       f"The server refused the user name or password for {m.username}. Microsoft 365 and "
                       "Google no longer accept passwords over IMAP: use an oauth2 auth method.")
    if m.auth.method is AuthMethod.OAUTH2_M365:
        roles = token_claims(token).get("roles")
        if isinstance(roles, list) and IMAP_ROLE not in roles:
            return _Failed("imap_permission_missing",
                           f"AUTHENTICATE failed: the token has no {IMAP_ROLE} role. Add the application permission "
                           f"{IMAP_ROLE} (Office 365 Exchange Online) to the app registration and grant admin consent.")
        return _Failed("mailbox_permission_missing",
                       f"AUTHENTICATE failed with a valid token: the app may not open {m.username}. Register its "
                       "service principal in Exchange (New-ServicePrincipal) and grant it FullAccess "
                       "(Add-MailboxPermission -AccessRights FullAccess); changes can take up to an hour.")
    return _Failed("token_refused",
                   f"The server refused the token for {m.username}: check the address, that IMAP is enabled for "
                   "the user, and (service account) that domain-wide delegation has https://mail.google.com/.")


def _subaddressing_note(client: IMAPClient, username: str) -> str:
    """Plus-addressed replies (mailbox+TOKEN@domain) can only be seen once one has arrived."""
    local = username.split("@", 1)[0]
    try:
        seen = bool(client.search(["TO", f"{local}+"]))
    except imaplib.IMAP4.error:
        seen = False
    if seen:
        return "plus-addressing works: mail to a +token address is in this folder"
    return ("plus-addressing not yet seen (replies go to mailbox+TOKEN@...): if the provider has it off, "
            "turn it on or set ESCALATIONS_REPLY_SUBADDRESSING=false")
