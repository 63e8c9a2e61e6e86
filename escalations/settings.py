"""Runtime settings (pydantic-settings): everything the service reads from its environment.

Environment variables are prefixed ``ESCALATIONS_``; nested values use ``__``
(``ESCALATIONS_RELAY__HOST=smtp.example.org``). Mailboxes to watch can be given as JSON in
``ESCALATIONS_MAILBOXES`` or in a YAML file named by ``ESCALATIONS_MAILBOXES_FILE``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Security = Literal["ssl", "starttls", "none"]


def default_config_dir() -> Path:
    """The repository's ``config/`` folder (beside the package in a source checkout)."""
    return Path(__file__).resolve().parent.parent / "config"


class MailboxSettings(BaseModel):
    """One IMAP mailbox the service watches (a partnership's existing shared mailbox)."""

    name: str = Field(description="Short account name, part of the idempotency key")
    host: str
    port: int = 993
    security: Security = "ssl"
    username: str
    password: SecretStr
    folder: str = "INBOX"
    #: After a message is durably stored: leave it, mark it \\Seen, or move it to a folder.
    after_store: Literal["none", "seen", "move"] = "seen"
    move_to: str = "Escalations/Stored"
    #: Re-issue IDLE before the 29-minute limit of RFC 2177.
    idle_renew_seconds: float = 25 * 60
    #: Without IDLE, poll this often.
    poll_seconds: float = 30.0
    #: A connection that answers nothing (NOOP/IDLE done) within this is dead.
    response_timeout_seconds: float = 30.0
    reconnect_initial_seconds: float = 1.0
    reconnect_max_seconds: float = 300.0
    fetch_batch: int = 100
    verify_tls: bool = True


class RelaySettings(BaseModel):
    """Outgoing SMTP relay. Without one, outgoing mail is written to ``<data-dir>/sent``."""

    host: str
    port: int = 587
    security: Security = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    timeout_seconds: float = 30.0
    verify_tls: bool = True
    #: PEM file of the CA(s) to trust for the relay's certificate (an in-house CA); default: the system's.
    ca_file: Path | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ESCALATIONS_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path("var")
    config_dir: Path = Field(default_factory=default_config_dir, alias="ESCALATIONS_CONFIG")
    database_url: str | None = None

    smtp_listen_host: str = "127.0.0.1"
    smtp_listen_port: int = 8025
    smtp_intake_enabled: bool = True
    #: Largest message the SMTP listener accepts (bytes).
    smtp_max_message_size: int = 50 * 1024 * 1024

    relay: RelaySettings | None = None
    mailboxes: list[MailboxSettings] = Field(default_factory=list)
    mailboxes_file: Path | None = None

    #: The domain in the Message-IDs we create.
    message_id_domain: str = "escalations.invalid"
    #: Secret that signs reply tokens. Unset: a random key is created once in
    #: ``<data-dir>/secret.key`` (mode 0600) and reused, so tokens survive restarts.
    secret_key: SecretStr | None = None

    #: Authentication-Results headers to trust (RFC 8601 authserv-id of our receiving server); empty:
    #: trust only the topmost header.
    trusted_authserv_ids: list[str] = Field(default_factory=list)
    #: Put reply tokens in Reply-To as mailbox+TOKEN@domain (the mailbox must accept sub-addresses).
    reply_subaddressing: bool = True
    #: At most this many messages to one address per hour (loop protection); the rest wait.
    max_mails_per_address_per_hour: int = 20

    outbox_max_attempts: int = 8
    outbox_backoff_initial_seconds: float = 30.0
    outbox_backoff_max_seconds: float = 3600.0
    #: How often the processor re-checks for work if nobody wakes it.
    process_interval_seconds: float = 5.0
    tick_interval_seconds: float = 60.0
    log_format: Literal["json", "console"] = "console"

    # Parsing and attachment reading run in a worker process within these limits. Over one, that
    # part is skipped, the rest of the mail is used, and a fixed code goes on the case or quarantine.
    #: Off: parse in the service's own process (same part limits, no time or memory limit).
    parse_in_worker: bool = True
    parse_timeout_seconds: float = 10.0
    #: The worker's address-space limit (RLIMIT_AS).
    parse_memory_bytes: int = 512 * 1024 * 1024
    attachment_max_decompressed_bytes: int = 20 * 1000 * 1000
    attachment_max_ratio: int = 100
    max_mime_parts: int = 500
    max_mime_depth: int = 20
    docx_max_elements: int = 50_000
    html_max_chars: int = 2_000_000

    model_config["populate_by_name"] = True

    @model_validator(mode="after")
    def _load_mailboxes_file(self) -> Settings:
        if self.mailboxes_file is not None:
            data = yaml.safe_load(self.mailboxes_file.read_text(encoding="utf-8")) or []
            if isinstance(data, dict):
                data = data.get("mailboxes", [])
            self.mailboxes = [*self.mailboxes, *(MailboxSettings.model_validate(m) for m in data)]
        return self

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'escalations.sqlite3').resolve()}"

    def token_secret(self) -> bytes:
        """The reply-token key: the configured one, else the data dir's persisted random key."""
        if self.secret_key is not None and self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / "secret.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process created it first: use theirs
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(48))
                    f.flush()
                    os.fsync(f.fileno())
        key = path.read_text(encoding="ascii").strip()
        if not key:
            raise ValueError(f"{path} is empty: delete it or set ESCALATIONS_SECRET_KEY")
        return key.encode()

    @property
    def sent_dir(self) -> Path:
        return self.data_dir / "sent"
