"""Watch one partnership's shared IMAP mailbox and store every new message raw, before touching it.

ARCHITECTURE "How a message flows" 1 (raw first): each message is committed with the idempotency
key (account, folder, UIDVALIDITY, UID) and the folder's cursor in one transaction; only then is it
flagged \\Seen or moved. Which messages are new is decided by the store's cursor (last stored UID
under the current UIDVALIDITY), never by \\Seen: IMAP is never the database.

A crash (or a dropped connection) between the commit and the flag leaves a stored message below the
cursor unflagged; so on every (re)connect, and after each catch-up that fetched mail, the messages
below the cursor that are not yet flagged (or still in the folder, when moving) are looked up in the
store by key, and those it has are flagged or moved. Only those: a message the store does not have
is never marked.

The loop: connect -> catch up -> IDLE (or poll when the server has no IDLE) -> catch up on any
server news -> ... Any socket/IMAP error or silence longer than ``response_timeout_seconds`` drops
the connection and reconnects with exponential backoff and jitter, catching up again.
"""

from __future__ import annotations

import contextlib
import imaplib
import random
import select
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from escalations.cases.store import Store, imap_key, message_id_of
from escalations.mailer.intake import Arrival, RawMailSink
from escalations.mailer.oauth import TokenError, TokenProvider, provider_for
from escalations.settings import MailboxSettings

#: Errors that mean "this connection is unusable": drop it and reconnect.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, imaplib.IMAP4.error, EOFError)

#: While idling, leave IDLE this often to prove the connection is alive (a silently dead TCP
#: connection shows no error until we ask something). Capped by mailbox.idle_renew_seconds.
LIVENESS_SECONDS = 240.0
#: How long one select() waits, so ``stop`` is honoured promptly.
STOP_CHECK_SECONDS = 0.25
#: Search again at most this often in one catch-up while the server keeps announcing new mail
#: (the next wake-up or poll takes the rest).
MAX_CATCH_UP_ROUNDS = 10
#: Socket timeout for the polite DONE/LOGOUT on the way out.
GOODBYE_TIMEOUT_SECONDS = 0.5


#: Messages of a fetch batch committed per transaction (each transaction holds SQLite's write lock).
STORE_BATCH = 20


class StoreFailed(Exception):
    """store_inbound raised for one message; it stays on the server and is retried after backoff."""


class ImapWatcher:
    def __init__(
        self,
        mailbox: MailboxSettings,
        store: Store,
        *,
        on_stored: Callable[[int], None] = lambda _id: None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        tokens: TokenProvider | None = None,
    ) -> None:
        self.mailbox = mailbox
        #: OAuth2 (XOAUTH2) sign-in; None: the mailbox's password.
        self.tokens = tokens if tokens is not None else provider_for(mailbox.auth, mailbox.username,
                                                                     account=mailbox.name)
        self.store = store
        self.sink = RawMailSink(store, on_stored)
        base = logger if logger is not None else structlog.get_logger("escalations.imap")
        self.log = base.bind(account=mailbox.name, folder=mailbox.folder)
        self._move_target: str | None = None  # move_to in the server's naming, once per connection
        self._random = random.Random()

    # ---- public ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"imap-{self.mailbox.name}"

    def catch_up(self) -> int:
        """Connect once, store everything not yet stored, disconnect. Returns how many rows were created."""
        client = self._connect()
        try:
            return self._catch_up_on(client, first=True)
        finally:
            self._close(client, in_idle=False)

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop`` is set. Never raises for mail-server or per-message trouble."""
        m = self.mailbox
        delay = m.reconnect_initial_seconds
        while not stop.is_set():
            client: IMAPClient | None = None
            in_idle = [False]
            try:
                client = self._connect()
                self._contact(idle=client.has_capability("IDLE"))  # signed in: before a long first catch-up
                self._catch_up_on(client, first=True, stop=stop)
                delay = m.reconnect_initial_seconds  # a good session resets the backoff
                if client.has_capability("IDLE"):
                    self._idle_loop(client, stop, in_idle)
                else:
                    self._poll_loop(client, stop)
            except StoreFailed as exc:
                cause = exc.__cause__
                self.log.error("imap.store_failed", uid=exc.args[0] if exc.args else None,
                               error_type=type(cause).__name__ if cause else None, exc_info=cause)
                self._contact(error="store_failed")
            except LoginError as exc:  # wrong password or locked account: keep retrying, slowly
                self.log.error("imap.login_failed", username=m.username, error=str(exc)[:300])
                self._contact(error="login_failed")
            except TokenError as exc:  # no token: the same backoff, and the code says why
                self.log.error("imap.token_failed", code=exc.code)
                self._contact(error=f"token:{exc.code}")
            except CONNECTION_ERRORS as exc:
                if not stop.is_set():
                    self.log.warning("imap.connection_lost", error_type=type(exc).__name__,
                                     error=str(exc)[:300])
                    self._contact(error=type(exc).__name__)
            except Exception:  # never let one surprise end the watcher thread
                self.log.exception("imap.unexpected_error")
                self._contact(error="unexpected_error")
            finally:
                if client is not None:
                    self._close(client, in_idle=in_idle[0])
            if stop.is_set():
                break
            wait = delay * (0.5 + self._random.random() / 2)  # jitter: many watchers don't reconnect in step
            self.log.info("imap.reconnect_wait", seconds=round(wait, 3))
            if stop.wait(wait):
                break
            delay = min(max(delay * 2, m.reconnect_initial_seconds), m.reconnect_max_seconds)
        self.log.info("imap.stopped")

    # ---- connection -----------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if not self.mailbox.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _connect(self) -> IMAPClient:
        m = self.mailbox
        ctx = self._ssl_context() if m.security in ("ssl", "starttls") else None
        client = IMAPClient(m.host, m.port, ssl=m.security == "ssl", ssl_context=ctx,
                            timeout=m.response_timeout_seconds)
        try:
            # Aware INTERNALDATEs (the server's own offset) instead of naive local time.
            client.normalise_times = False
            if m.security == "starttls":
                client.starttls(ctx)
            self._login(client)
            client.capabilities()  # cache the post-login list
            self._move_target = None
            self.log.info("imap.connected", host=m.host, port=m.port, security=m.security,
                          idle=client.has_capability("IDLE"))
        except BaseException:
            self._close(client, in_idle=False)
            raise
        return client

    def _login(self, client: IMAPClient) -> None:
        m = self.mailbox
        if self.tokens is None:
            client.login(m.username, m.login_password())
            return
        try:
            client.oauth2_login(m.username, self.tokens.token().value)
        except LoginError:
            # A cached token the server no longer takes (revoked, or our clock is behind): one
            # fresh token, then give up until the next reconnect.
            self.log.info("imap.token_refused_retrying")
            client.oauth2_login(m.username, self.tokens.token(force_refresh=True).value)

    def _close(self, client: IMAPClient, *, in_idle: bool) -> None:
        """Say goodbye briefly (the server may be gone), then drop the socket."""
        with contextlib.suppress(Exception):
            client.socket().settimeout(GOODBYE_TIMEOUT_SECONDS)
        if in_idle:
            with contextlib.suppress(Exception):
                client.idle_done()
        with contextlib.suppress(Exception):
            client.logout()
        with contextlib.suppress(Exception):
            client.shutdown()

    # ---- catching up ----------------------------------------------------------------------

    def _catch_up_on(self, client: IMAPClient, *, first: bool = False,
                     stop: threading.Event | None = None) -> int:
        m = self.mailbox
        info = client.select_folder(m.folder, readonly=m.after_store == "none")
        uidvalidity = int(info[b"UIDVALIDITY"])
        cursor = self.store.imap_cursor(m.name, m.folder)
        last_uid = 0
        if cursor is not None:
            if cursor[0] != uidvalidity:
                # Every UID we knew is meaningless now: refetch the folder; fingerprints dedup.
                self.log.warning("imap.uidvalidity_changed", old=cursor[0], new=uidvalidity)
                self.store.reset_imap_cursor(m.name, m.folder, uidvalidity)
            else:
                last_uid = cursor[1]
        if first and last_uid:
            self._finish_leftovers(client, uidvalidity, last_uid)
        _drain_news(client)  # SELECT's own EXISTS is not news
        created = fetched_total = 0
        for _round in range(MAX_CATCH_UP_ROUNDS):
            uids = self._new_uids(client, last_uid)
            fetched_total += len(uids)
            created += self._fetch_and_store(client, uids, uidvalidity, stop)
            if uids:
                last_uid = uids[-1]
            if stop is not None and stop.is_set():
                break
            # Mail that arrived while we worked is announced as EXISTS in the replies to our own
            # commands, not again once IDLE starts: look once more before going back to wait.
            if not _drain_news(client):
                break
        if fetched_total:
            self.log.info("imap.caught_up", fetched=fetched_total, created=created, uidvalidity=uidvalidity)
            if last_uid:
                self._finish_leftovers(client, uidvalidity, last_uid)
        return created

    @staticmethod
    def _new_uids(client: IMAPClient, last_uid: int) -> list[int]:
        # "n+1:*" always matches the highest UID, even when it is <= n: filter.
        found = (int(x) for x in client.search(["UID", f"{last_uid + 1}:*"]))
        return sorted(u for u in found if u > last_uid)

    def _fetch_and_store(self, client: IMAPClient, uids: Sequence[int], uidvalidity: int,
                         stop: threading.Event | None) -> int:
        batch_size = max(1, self.mailbox.fetch_batch)
        created = 0
        for start in range(0, len(uids), batch_size):
            if stop is not None and stop.is_set():
                break
            batch = list(uids[start:start + batch_size])
            fetched = client.fetch(batch, ["BODY.PEEK[]", "INTERNALDATE"])
            done: list[int] = []
            try:
                present = []
                for uid in batch:
                    item = fetched.get(uid)
                    if item is None or b"BODY[]" not in item:
                        self.log.info("imap.vanished", uid=uid)  # expunged between SEARCH and FETCH
                        continue
                    present.append((uid, item))
                # UID order, a few per transaction: a crash mid-batch resumes at the cursor, which moves
                # in the same transaction as the rows.
                for at in range(0, len(present), STORE_BATCH):
                    if stop is not None and stop.is_set():
                        break
                    chunk = present[at:at + STORE_BATCH]
                    created += self._store_chunk(uidvalidity, chunk)
                    done.extend(uid for uid, _item in chunk)
            finally:
                if done:  # only what is committed is flagged or moved
                    self._after_store(client, done)
        return created

    def _store_chunk(self, uidvalidity: int, chunk: Sequence[tuple[int, dict[bytes, Any]]]) -> int:
        m = self.mailbox
        arrivals = []
        for uid, item in chunk:
            raw = bytes(item[b"BODY[]"] or b"")
            received_at = _as_utc(item.get(b"INTERNALDATE")) or self.store.clock.now()
            arrivals.append(Arrival(raw, source="imap", idempotency_key=imap_key(m.name, m.folder, uidvalidity, uid),
                                    account=m.name, folder=m.folder, received_at=received_at,
                                    imap_cursor=(uidvalidity, uid)))
        try:
            results = self.sink.accept_many(arrivals)
        except Exception as exc:
            raise StoreFailed(chunk[0][0]) from exc
        # One line a fetch chunk, its messages in order (a line each cost more than storing them).
        created = sum(1 for r in results if r.created)
        self.log.info("imap.stored", uids=[uid for uid, _item in chunk], inbound_ids=[r.id for r in results],
                      created=created, message_ids=[message_id_of(a.raw) for a in arrivals],
                      sizes=[len(a.raw) for a in arrivals])
        return created

    # ---- after store: flag or move ----------------------------------------------------------

    def _after_store(self, client: IMAPClient, uids: Sequence[int]) -> None:
        m = self.mailbox
        if m.after_store == "seen":
            client.add_flags(list(uids), [b"\\Seen"], silent=True)
        elif m.after_store == "move":
            self._move(client, uids)

    def _move(self, client: IMAPClient, uids: Sequence[int]) -> None:
        target = self._ensure_move_target(client)
        if client.has_capability("MOVE"):
            client.move(list(uids), target)
        else:
            client.copy(list(uids), target)
            client.add_flags(list(uids), [b"\\Deleted"], silent=True)
            if client.has_capability("UIDPLUS"):
                client.uid_expunge(list(uids))
            else:
                # A plain EXPUNGE would also remove messages a person marked \Deleted: leave them.
                self.log.warning("imap.move_without_expunge", count=len(uids))
        self.log.info("imap.moved", uids=list(uids), to=target)

    def _ensure_move_target(self, client: IMAPClient) -> str:
        if self._move_target is not None:
            return self._move_target
        target = self._server_folder_name(client, self.mailbox.move_to)
        if not client.folder_exists(target):
            try:
                client.create_folder(target)
                self.log.info("imap.folder_created", to=target)
            except imaplib.IMAP4.error:
                if not client.folder_exists(target):  # someone else may have just made it
                    raise
        self._move_target = target
        return target

    @staticmethod
    def _server_folder_name(client: IMAPClient, name: str) -> str:
        """move_to is written with "/" between levels; use the server's delimiter and personal prefix."""
        prefix, delimiter = "", "/"
        try:
            if client.has_capability("NAMESPACE"):
                personal = client.namespace().personal
                if personal:
                    prefix, delimiter = personal[0][0] or "", personal[0][1] or "/"
            else:
                listed = client.list_folders("", "")
                if listed and listed[0][1]:
                    delimiter = listed[0][1].decode() if isinstance(listed[0][1], bytes) else listed[0][1]
        except imaplib.IMAP4.error:
            return name
        if isinstance(prefix, bytes):
            prefix = prefix.decode()
        if isinstance(delimiter, bytes):
            delimiter = delimiter.decode()
        server_name = name.replace("/", delimiter) if delimiter != "/" else name
        if prefix and not server_name.startswith(prefix) and server_name.upper() != "INBOX":
            server_name = prefix + server_name
        return server_name

    def _finish_leftovers(self, client: IMAPClient, uidvalidity: int, last_uid: int) -> None:
        """Messages stored but not flagged or moved (a crash or disconnect between commit and
        flag) would stay so forever, below the cursor: flag or move those the store has, and only those."""
        m = self.mailbox
        if m.after_store == "none":
            return
        criteria: list[str] = ["UID", f"1:{last_uid}"]
        if m.after_store == "seen":
            criteria.append("UNSEEN")
        left = [int(u) for u in client.search(criteria) if int(u) <= last_uid]
        if not left:
            return
        stored = sorted(self.store.stored_imap_uids(m.name, m.folder, uidvalidity, left))
        if stored:
            self.log.info("imap.leftovers", count=len(stored), after_store=m.after_store)
            self._after_store(client, stored)

    # ---- waiting --------------------------------------------------------------------------

    def _idle_loop(self, client: IMAPClient, stop: threading.Event, in_idle: list[bool]) -> None:
        m = self.mailbox
        renew = max(1.0, min(m.idle_renew_seconds, LIVENESS_SECONDS))
        while not stop.is_set():
            client.idle()
            in_idle[0] = True
            started = time.monotonic()
            woken = _buffered(client)  # the server's news may have come with "+ idling"
            while not woken and not stop.is_set():
                remaining = renew - (time.monotonic() - started)
                if remaining <= 0:
                    break
                readable, _, _ = select.select([client.socket()], [], [], min(STOP_CHECK_SECONDS, remaining))
                woken = bool(readable)
            if stop.is_set():
                return  # _close says DONE and LOGOUT
            # DONE needs a tagged answer within response_timeout: this is also the liveness check.
            in_idle[0] = False
            _text, responses = client.idle_done()
            if woken:
                self.log.debug("imap.idle_woken", responses=len(responses))
            else:
                client.noop()
            self._catch_up_on(client, stop=stop)
            self._contact(idle=True)

    def _poll_loop(self, client: IMAPClient, stop: threading.Event) -> None:
        while not stop.wait(self.mailbox.poll_seconds):
            client.noop()  # liveness: a dead connection fails here within response_timeout
            self._catch_up_on(client, stop=stop)
            self._contact(idle=False)

    def _contact(self, *, idle: bool | None = None, error: str | None = None) -> None:
        """Record the contact (or its failure) for status and alerts; never stops the watcher."""
        try:
            self.store.record_mailbox_contact(self.mailbox.name, idle=idle, error_code=error)
        except Exception:
            self.log.warning("imap.health_not_recorded")


def _as_utc(value: object) -> datetime | None:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return None


def _drain_news(client: IMAPClient) -> bool:
    """Forget (and report) EXISTS/RECENT the server sent alongside replies to earlier commands.

    imaplib keeps such unsolicited responses in ``untagged_responses`` until someone takes them.
    """
    untagged = getattr(client._imap, "untagged_responses", None)
    if not isinstance(untagged, dict):
        return True  # cannot tell: assume there may be news
    news = False
    for key in ("EXISTS", "RECENT"):
        if untagged.pop(key, None):
            news = True
    return news


def _buffered(client: IMAPClient) -> bool:
    """True if imaplib's reader already holds unread server data (select() cannot see it)."""
    reader = getattr(client._imap, "file", None)
    if reader is None or not hasattr(reader, "peek"):
        return False
    sock = client.socket()
    previous = sock.gettimeout()
    try:
        sock.setblocking(False)
        return bool(reader.peek(1))
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except (OSError, ValueError):
        return True  # something is wrong with the socket: wake up and let DONE find out
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(previous)
