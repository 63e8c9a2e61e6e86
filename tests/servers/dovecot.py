"""A real Dovecot IMAP server on loopback, run from a generated config (no system paths, no system service).

Usage::

    def test_x(dovecot: DovecotServer) -> None:
        uid = dovecot.append(raw_bytes)                 # APPEND to INBOX (or folder=...), returns the UID
        settings = dovecot.mailbox_settings(after_store="none")   # MailboxSettings pointing here
        dovecot.kick()                                  # force-close every client connection (doveadm kick)
        dovecot.stop(); dovecot.start()                 # same port, same maildir (restart(), kill() too)

    def test_poll(dovecot_factory: Callable[..., DovecotServer]) -> None:
        server = dovecot_factory(drop_capabilities={"IDLE"})   # a server that does not advertise IDLE
        tls = dovecot_factory(tls=True)                 # self-signed: imaps on tls_port, STARTTLS on port

Attributes: host, port, tls_port, user, password, maildir, conf_path, log_path. Helpers: client()
(a logged-in IMAPClient), append/append_many, deliver (into the maildir, works while stopped),
uids/flags/uidvalidity (read-only look), set_uidvalidity, freeze_connections/thaw (a silent
peer), imap_pids, doveadm(*args), log().

Each test gets its own server (startup is a fraction of a second), so tests never share mail.

Running as root (CI machines): Dovecot refuses to run login processes as root ("This process must
not be run as root") and refuses mail access for uid 0 ("userdb returned 0 as uid"). The master
then stays root, but default_login_user, default_internal_user and the mail uid/gid are set to
``nobody``, and the runtime directory is made traversable, its mail and state folders owned by that user. As a normal
user everything runs as that user (the "rootless" setup of the Dovecot docs). Chroots are off in
both cases, so no capability beyond setuid is needed.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from escalations.settings import MailboxSettings
from tests.servers import free_port, unavailable

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"

#: Dovecot 2.3's post-login CAPABILITY list; `drop_capabilities` removes names from it and sets
#: the result as `imap_capability` (which replaces, not extends, the list unless it starts with "+").
DEFAULT_CAPABILITIES = (
    "IMAP4rev1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE", "SORT", "SORT=DISPLAY",
    "THREAD=REFERENCES", "THREAD=REFS", "THREAD=ORDEREDSUBJECT", "MULTIAPPEND", "URL-PARTIAL",
    "CATENATE", "UNSELECT", "CHILDREN", "NAMESPACE", "UIDPLUS", "LIST-EXTENDED", "I18NLEVEL=1",
    "CONDSTORE", "QRESYNC", "ESEARCH", "ESORT", "SEARCHRES", "WITHIN", "CONTEXT=SEARCH", "LIST-STATUS",
    "BINARY", "MOVE", "SNIPPET=FUZZY", "PREVIEW=FUZZY", "PREVIEW", "STATUS=SIZE", "SAVEDATE", "LITERAL+",
    "NOTIFY",
)


class DovecotServer:
    """One Dovecot instance; `host`, `port`, `user`, `password`, `maildir` describe it."""

    def __init__(self, *, drop_capabilities: Collection[str] = (), tls: bool = False, user: str = "watcher",
                 password: str = "s3cret-Passw0rd", oauth2_introspection_url: str | None = None) -> None:
        self.host = "127.0.0.1"
        #: With a URL: XOAUTH2/OAUTHBEARER sign-in, each token checked there (RFC 7662 introspection,
        #: POST), beside the password (which the test helpers keep using).
        self.oauth2_introspection_url = oauth2_introspection_url
        self.port = free_port()
        #: With tls=True: implicit TLS here, and STARTTLS on `port` (self-signed certificate).
        self.tls = tls
        self.tls_port = free_port() if tls else 0
        self.user = user
        self.password = password
        self.drop_capabilities = {c.upper() for c in drop_capabilities}
        self.root = Path(tempfile.mkdtemp(prefix="dovecot-"))
        self.conf_path = self.root / "dovecot.conf"
        self.log_path = self.root / "dovecot.log"
        self.maildir = self.root / "mail" / user / "Maildir"
        self.process: subprocess.Popen[bytes] | None = None
        self._frozen: list[int] = []
        self._deliveries = 0
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.run_user = nobody.pw_name
            self.run_group = grp.getgrgid(nobody.pw_gid).gr_name
            self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
        else:
            self.uid, self.gid = os.geteuid(), os.getegid()
            self.run_user = pwd.getpwuid(self.uid).pw_name
            self.run_group = grp.getgrgid(self.gid).gr_name
        self._write_config()

    # ---- configuration -------------------------------------------------------------------

    def _write_config(self) -> None:
        root = self.root
        for sub in ("run", "state", "mail"):
            (root / sub).mkdir(exist_ok=True)
        (root / "passwd").write_text(f"{self.user}:{{PLAIN}}{self.password}::::::\n", encoding="utf-8")
        ssl_settings = "ssl = no\n"
        if self.tls:
            cert, key = root / "cert.pem", root / "key.pem"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                 "-keyout", str(key), "-out", str(cert)],
                check=True, capture_output=True, timeout=60,
            )
            ssl_settings = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n"
        mechanisms, oauth2_passdb = "plain login", ""
        if self.oauth2_introspection_url:
            oauth2_conf = root / "dovecot-oauth2.conf.ext"
            # Dovecot 2.3 oauth2 passdb: no tokeninfo_url, so every token is introspected; the
            # mailbox name in the answer must equal the login user.
            oauth2_conf.write_text(
                f"introspection_mode = post\nintrospection_url = {self.oauth2_introspection_url}\n"
                "force_introspection = yes\nusername_attribute = username\n"
                "active_attribute = active\nactive_value = true\ntimeout_msecs = 5000\n", encoding="utf-8")
            mechanisms += " xoauth2 oauthbearer"
            oauth2_passdb = (f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                             f"  args = {oauth2_conf}\n}}\n")
        capability = ""
        if self.drop_capabilities:
            caps = [c for c in DEFAULT_CAPABILITIES if c.upper() not in self.drop_capabilities]
            capability = f"imap_capability = {' '.join(caps)}\n"
        self.conf_path.write_text(
            f"""# generated by tests/servers/dovecot.py
base_dir = {root}/run
state_dir = {root}/state
instance_name = escalations-test-{self.port}
log_path = {self.log_path}
info_log_path = {self.log_path}
protocols = imap
listen = {self.host}
{ssl_settings}disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
login_trusted_networks = 127.0.0.0/8
auth_failure_delay = 0
default_internal_user = {self.run_user}
default_internal_group = {self.run_group}
default_login_user = {self.run_user}
first_valid_uid = 1
first_valid_gid = 0
mail_max_userip_connections = 100
mail_location = maildir:{root}/mail/%u/Maildir
mail_fsync = never
shutdown_clients = yes
{capability}
{oauth2_passdb}passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
  default_fields = uid={self.uid} gid={self.gid} home={root}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.tls_port}
  }}
}}
service anvil {{
  chroot =
  # no auth penalty (up to 15 s per failed login from one IP): tests of wrong passwords stay fast
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service stats {{
  chroot =
}}
""",
            encoding="utf-8",
        )
        if os.geteuid() == 0:
            # Mail processes run as nobody: they must reach and write the maildir.
            self.root.chmod(0o755)
            for path in (root / "mail", root / "state"):
                os.chown(path, self.uid, self.gid)

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        previous = os.umask(0o022)  # Dovecot's sockets and files, for its unprivileged processes
        try:
            self.process = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, so kill() takes every child with it
            )
        finally:
            os.umask(previous)
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"dovecot exited with {self.process.returncode}: {err}\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as s:
                    s.settimeout(2)
                    greeting = s.recv(1024)
                if greeting.startswith(b"* OK"):
                    return
                last_error = RuntimeError(f"unexpected greeting {greeting!r}")
            except OSError as exc:
                last_error = exc
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not answer on {self.host}:{self.port}: {last_error}\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the master (which takes its children with it); the maildir stays."""
        self.thaw()
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if proc.stderr:
            proc.stderr.close()
        # The master removes its pid file last; a quick restart must not see a stale one.
        pidfile = self.root / "run" / "master.pid"
        deadline = time.monotonic() + timeout
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def kill(self, *, wait: bool = True) -> None:
        """SIGKILL the whole server at once (a crash; also the fast teardown). Clients see EOF."""
        self.thaw()
        proc, self.process = self.process, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
        # The children (auth, anvil, imap-login, imap) die with the group, but asynchronously; a
        # restart that overlaps them can meet their sockets and locks. Wait until the group is gone.
        deadline = time.monotonic() + (10 if wait else 0)
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.02)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.kill(wait=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    # ---- helpers for tests -----------------------------------------------------------------

    def doveadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOVEADM, "-c", str(self.conf_path), *args], capture_output=True, text=True,
                              check=check, timeout=30)

    def kick(self) -> None:
        """Force-close every IMAP connection of the test user (the server keeps running)."""
        self.doveadm("kick", self.user)

    def imap_pids(self) -> list[int]:
        """Process ids of the test user's imap processes (one per logged-in connection)."""
        out = self.doveadm("who", "-1", self.user, check=False).stdout
        return [int(line.split()[2]) for line in out.splitlines()[1:] if len(line.split()) >= 3]

    def freeze_connections(self) -> list[int]:
        """SIGSTOP the user's imap processes: connections stay open but the server goes silent
        (a dead peer behind a NAT or firewall). `thaw` (and teardown) resumes them."""
        pids = self.imap_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        self._frozen.extend(pids)
        return pids

    def thaw(self) -> None:
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen.clear()

    def deliver(self, raw: bytes, folder: str = "INBOX") -> Path:
        """Drop a message straight into the maildir as a local delivery agent would; works while the
        IMAP server is stopped (mail that arrives during an outage)."""
        box = self.maildir if folder.upper() == "INBOX" else self.maildir / f".{folder}"
        for sub in ("tmp", "new", "cur"):
            (box / sub).mkdir(parents=True, exist_ok=True)
            os.chown(box / sub, self.uid, self.gid)
        self._deliveries += 1
        name = f"{time.time_ns()}.P{os.getpid()}Q{self._deliveries}.escalations-test"
        tmp = box / "tmp" / name
        tmp.write_bytes(raw.replace(b"\r\n", b"\n"))  # maildir files use bare LF
        os.chown(tmp, self.uid, self.gid)
        final = box / "new" / name
        os.replace(tmp, final)
        return final

    def set_uidvalidity(self, value: int, folder: str = "INBOX") -> None:
        """Give a folder a new UIDVALIDITY (as after a server migration or mailbox rebuild)."""
        self.doveadm("mailbox", "update", "-u", self.user, "--uid-validity", str(value), folder)

    @contextlib.contextmanager
    def client(self, timeout: float = 10.0) -> Iterator[IMAPClient]:
        """A logged-in IMAPClient (a second, independent connection; the "mail server side")."""
        c = IMAPClient(self.host, self.port, ssl=False, timeout=timeout)
        try:
            c.login(self.user, self.password)
            yield c
        finally:
            with contextlib.suppress(Exception):
                c.logout()

    def create_folder(self, folder: str) -> None:
        with self.client() as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)

    def append(self, raw: bytes, folder: str = "INBOX", flags: Iterable[str | bytes] = (),
               msg_time: datetime | None = None) -> int:
        """APPEND one raw message; returns its UID (UIDPLUS APPENDUID)."""
        return self.append_many([raw], folder=folder, flags=flags, msg_time=msg_time)[0]

    def append_many(self, raws: Iterable[bytes], folder: str = "INBOX", flags: Iterable[str | bytes] = (),
                    msg_time: datetime | None = None) -> list[int]:
        uids: list[int] = []
        flag_list = list(flags)
        with self.client() as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
            for raw in raws:
                resp = c.append(folder, raw, flags=flag_list, msg_time=msg_time)
                uids.append(_appenduid(resp))
        return uids

    def uids(self, folder: str = "INBOX") -> list[int]:
        with self.client() as c:
            if not c.folder_exists(folder):
                return []
            c.select_folder(folder, readonly=True)
            return sorted(int(u) for u in c.search("ALL"))

    def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags (as str) for every message in a folder, read without changing anything."""
        with self.client() as c:
            c.select_folder(folder, readonly=True)
            uids = c.search("ALL")
            fetched = c.fetch(uids, ["FLAGS"]) if uids else {}
            return {int(uid): {f.decode() if isinstance(f, bytes) else str(f) for f in data[b"FLAGS"]}
                    for uid, data in fetched.items()}

    def uidvalidity(self, folder: str = "INBOX") -> int:
        with self.client() as c:
            status = c.folder_status(folder, ["UIDVALIDITY"])
            return int(status[b"UIDVALIDITY"])

    def mailbox_settings(self, name: str = "test", **overrides: Any) -> MailboxSettings:
        """MailboxSettings pointing at this server, with timeouts short enough for tests."""
        values: dict[str, Any] = {
            "name": name,
            "host": self.host,
            "port": self.port,
            "security": "none",
            "username": self.user,
            "password": self.password,
            "folder": "INBOX",
            "after_store": "none",
            "poll_seconds": 0.5,
            "response_timeout_seconds": 3.0,
            "reconnect_initial_seconds": 0.1,
            "reconnect_max_seconds": 0.5,
            "idle_renew_seconds": 60.0,
            "fetch_batch": 100,
        }
        if overrides.get("security") == "ssl":
            values["port"] = self.tls_port
        values.update(overrides)
        return MailboxSettings.model_validate(values)


def _appenduid(resp: bytes | str) -> int:
    # b"[APPENDUID 1700000000 5] Append completed."
    text = resp.decode() if isinstance(resp, bytes) else resp
    if "APPENDUID" not in text:
        raise AssertionError(f"server did not answer APPENDUID: {text!r}")
    return int(text.split("APPENDUID", 1)[1].split("]", 1)[0].split()[1])


def _require_dovecot() -> None:
    if not (os.path.exists(DOVECOT) and os.access(DOVECOT, os.X_OK)):
        unavailable("dovecot not installed: apt-get install dovecot-imapd")


@pytest.fixture
def dovecot_factory() -> Iterator[Callable[..., DovecotServer]]:
    """Start extra or differently configured servers: ``dovecot_factory(drop_capabilities={"IDLE"})``."""
    _require_dovecot()
    servers: list[DovecotServer] = []

    def factory(**kwargs: Any) -> DovecotServer:
        if kwargs.get("tls") and shutil.which("openssl") is None:
            unavailable("openssl not installed (a dependency of dovecot-core)")
        # Files Dovecot's unprivileged processes read are written with the usual umask, whatever this
        # process's is now (a service running in-process for other tests holds umask 077 meanwhile).
        previous = os.umask(0o022)
        try:
            server = DovecotServer(**kwargs)
            servers.append(server)
            server.start()
        finally:
            os.umask(previous)
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.cleanup()


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., DovecotServer]) -> DovecotServer:
    """A fresh Dovecot with one user and an empty INBOX, stopped and deleted after the test."""
    return dovecot_factory()
