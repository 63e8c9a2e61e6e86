"""Crash harness: `escalations run` as a real process, killed with SIGKILL at random moments and
restarted, while referrals arrive by IMAP APPEND (Dovecot) and by SMTP to its own intake, and its mail
goes to an aiosmtpd sink.

At the end: exactly one case and one acknowledgement per referral, no case change applied twice
(case_event rows per kind per case), every IMAP message \\Seen, and all mail stranded by the last
kill sent after the last restart. Printed, not asserted (tests never assert wall-clock times): how
long after the last restart the stranded mail went out, and the duplicate window — sending is
at-least-once with a fixed Message-ID, so a kill between the relay's 250 and marking the row sent
sends that message twice; the sink counts such duplicates by Message-ID.

Short mode by default (ESCALATIONS_CRASH_KILLS=10, 30 referrals); the full run:
``ESCALATIONS_CRASH_KILLS=100 ESCALATIONS_CRASH_REFERRALS=200 pytest -m slow tests/slow -s``.
ESCALATIONS_CRASH_SEED replays a run; ESCALATIONS_CRASH_DB=postgres runs it on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from escalations.cases.store import make_engine
from escalations.policy_files import load_config
from tests.conftest import CONFIG_DIR
from tests.parsers.conftest import DEMO, MAIL, manifest
from tests.servers import free_port, wait_until
from tests.servers.dovecot import DovecotServer

KILLS = int(os.environ.get("ESCALATIONS_CRASH_KILLS", "10"))
REFERRALS = int(os.environ.get("ESCALATIONS_CRASH_REFERRALS", "30" if KILLS <= 10 else str(2 * KILLS)))
SEED = int(os.environ.get("ESCALATIONS_CRASH_SEED", str(random.randrange(1 << 30))))

pytestmark = [pytest.mark.slow, pytest.mark.servers, pytest.mark.timeout(300 + 12 * KILLS)]


# ---- the relay sink ---------------------------------------------------------------------------


@dataclass
class Received:
    at: float
    message_id: str
    template: str
    in_reply_to: str


@dataclass
class Sink:
    """Every message the service sends, with when it arrived."""

    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        msg = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        with self.lock:
            self.received.append(Received(time.time(), str(msg["Message-ID"] or "").strip("<> "),
                                          str(msg["X-Escalations-Template"] or ""),
                                          str(msg["In-Reply-To"] or "").strip("<> ")))
        return "250 OK"

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    handler = Sink()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def crash_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if os.environ.get("ESCALATIONS_CRASH_DB", "sqlite") == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'var' / 'escalations.sqlite3'}"


# ---- referrals --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Referral:
    n: int
    message_id: str
    mailbox: str  # the partnership mailbox it is addressed to (the SMTP envelope recipient)
    raw: bytes
    via: str  # imap | smtp


def _sources() -> list[tuple[str, bytes]]:
    """(partnership, raw) of each sample referral: the demo's and the corpus's."""
    found = [(p.stem, p.read_bytes()) for p in sorted(DEMO.glob("*.eml"))]
    found += [(f["partnership"], (MAIL / f["file"]).read_bytes()) for f in manifest() if f["kind"] == "referral"]
    return found


def _vary(raw: bytes, n: int, message_id: str) -> bytes:
    """The same referral as a distinct message: its own Message-ID, and Subject."""
    raw = re.sub(rb"\r?\n", b"\r\n", raw)
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = [ln for ln in re.split(rb"\r\n(?![ \t])", head) if not ln.lower().startswith(b"message-id:")]
    subject = next((i for i, ln in enumerate(lines) if ln.lower().startswith(b"subject:")), None)
    if subject is None:
        lines.append(f"Subject: Escalation #{n}".encode())
    else:
        lines[subject] += f" #{n}".encode()
    lines.append(f"Message-ID: <{message_id}>".encode())
    return b"\r\n".join(lines) + sep + body


def referrals(count: int, rng: random.Random) -> list[Referral]:
    config = load_config(CONFIG_DIR)
    sources = _sources()
    out = []
    for n in range(count):
        partnership, raw = sources[n % len(sources)]
        mid = f"crash-{n}-{SEED}@example.org"
        out.append(Referral(n, mid, config.partnerships[partnership].primary_mailbox, _vary(raw, n, mid),
                            rng.choice(["imap", "smtp"])))
    return out


def submit(r: Referral, dovecot: DovecotServer, smtp_port: int, stop: threading.Event,
           submitted: dict[str, float]) -> None:
    """Deliver one referral; over SMTP, retry as a sending MTA would until the (restarting) service
    answers 250. ``submitted`` gets when it was first offered."""
    submitted[r.message_id] = time.time()
    if r.via == "imap":
        dovecot.append(r.raw)
        return
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as c:
                c.sendmail("practitioner@example.org", [r.mailbox], r.raw)
            return
        except (OSError, smtplib.SMTPException):
            time.sleep(0.2)


# ---- the service process ------------------------------------------------------------------------


class Service:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"\n==== start {self.starts} ====\n".encode())
            out.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "escalations", "run"], env=self.env,
                                         stdout=out, stderr=out, stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the service exited by itself ({self.proc.returncode}); see {self.log}")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def service_env(tmp_path: Path, database_url: str, dovecot: DovecotServer, relay_port: int,
                smtp_port: int) -> dict[str, str]:
    mailbox = {"name": "crash", "host": dovecot.host, "port": dovecot.port, "security": "none",
               "username": dovecot.user, "password": dovecot.password, "folder": "INBOX", "after_store": "seen",
               "poll_seconds": 0.5, "response_timeout_seconds": 5.0, "reconnect_initial_seconds": 0.1,
               "reconnect_max_seconds": 0.5, "idle_renew_seconds": 60.0}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCALATIONS_")}
    env.update({
        "ESCALATIONS_DATA_DIR": str(tmp_path / "var"),
        "ESCALATIONS_CONFIG": str(CONFIG_DIR),
        "ESCALATIONS_DATABASE_URL": database_url,
        "ESCALATIONS_MAILBOXES": json.dumps([mailbox]),
        "ESCALATIONS_RELAY__HOST": "127.0.0.1",
        "ESCALATIONS_RELAY__PORT": str(relay_port),
        "ESCALATIONS_RELAY__SECURITY": "none",
        "ESCALATIONS_SMTP_LISTEN_PORT": str(smtp_port),
        # the web interface on a free port (the default, 8080, may be anyone's on a shared machine)
        "ESCALATIONS_WEB__BIND": "127.0.0.1:0",
        "ESCALATIONS_LOG_FORMAT": "json",
        # one practitioner's many referrals are acknowledged within the hour: lift the loop cap
        "ESCALATIONS_MAX_MAILS_PER_ADDRESS_PER_HOUR": "1000000",
    })
    return env


# ---- reading the database --------------------------------------------------------------------------


class Db:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)

    def rows(self, query: str) -> list[Any]:
        try:
            with self.engine.connect() as c:
                return list(c.execute(sa.text(query)).all())
        except sa.exc.OperationalError:  # the schema is not there yet (before the first start)
            return []

    def scalar(self, query: str) -> Any:
        rows = self.rows(query)
        return rows[0][0] if rows else None


def _detail(value: object) -> dict[str, object]:
    if isinstance(value, dict):
        return value
    try:
        loaded = json.loads(str(value))
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _stage_of(detail: Any) -> Any:
    d = json.loads(detail) if isinstance(detail, str) else detail
    return d.get("stage", d.get("from_stage_index"))


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


# ---- the test --------------------------------------------------------------------------------


def test_sigkill_at_random_moments_loses_and_repeats_nothing(
        tmp_path: Path, dovecot: DovecotServer, sink: tuple[Sink, int], crash_database_url: str) -> None:
    print(f"\ncrash harness: seed {SEED} (ESCALATIONS_CRASH_SEED replays it), {KILLS} kills, {REFERRALS} referrals")
    rng = random.Random(SEED)
    relay, relay_port = sink
    smtp_port = free_port()
    (tmp_path / "var").mkdir()
    service = Service(service_env(tmp_path, crash_database_url, dovecot, relay_port, smtp_port),
                      tmp_path / "service.log")
    db = Db(crash_database_url)
    todo = referrals(REFERRALS, rng)
    # Spread the referrals over the kills, so that mail arrives while the service starts, works and
    # dies; the last kill comes while a final burst is being worked on, so that it strands mail.
    burst = max(5, REFERRALS // 5)
    batches = [todo[:-burst][i::KILLS - 1] for i in range(KILLS - 1)] + [todo[-burst:]]
    stop_feeding = threading.Event()
    submitted: dict[str, float] = {}
    feeders: list[threading.Thread] = []
    started = time.monotonic()
    try:
        for kill in range(KILLS):
            service.start()
            for r in batches[kill]:
                t = threading.Thread(target=submit, args=(r, dovecot, smtp_port, stop_feeding, submitted),
                                     daemon=True)
                t.start()
                feeders.append(t)
            if kill < KILLS - 1:
                time.sleep(rng.uniform(0.3, 3.5))
            else:
                with contextlib.suppress(AssertionError):
                    wait_until(lambda: (db.scalar("SELECT count(*) FROM outbox WHERE status <> 'sent'") or 0) > 0,
                               timeout=20, interval=0.01)
            service.kill()
        # the state the last kill left, then the last restart
        stranded_out = {r[0] for r in db.rows("SELECT message_id FROM outbox WHERE status IN ('pending','sending')")}
        stranded_in = db.scalar("SELECT count(*) FROM inbound_message WHERE status = 'pending'") or 0
        stranded_timers = db.scalar("SELECT count(*) FROM timer WHERE status = 'firing'") or 0
        restarted = time.time()
        service.start()
        for t in feeders:
            t.join(60)
            assert not t.is_alive(), "a referral could not be delivered over SMTP"

        def settled() -> bool:
            return (db.scalar("SELECT count(*) FROM inbound_message") == REFERRALS
                    and db.scalar("SELECT count(*) FROM inbound_message WHERE status = 'pending'") == 0
                    and db.scalar("SELECT count(*) FROM outbox WHERE status <> 'sent'") == 0
                    and db.scalar("SELECT count(*) FROM timer WHERE status IN ('firing', 'failed')") == 0
                    and all("\\Seen" in f for f in dovecot.flags().values()))

        wait_until(settled, timeout=120, what="every referral processed, every mail sent, every message \\Seen",
                   interval=0.25)
        settled_after = time.time() - restarted
        # An administrator replays what the kills quarantined (3 unfinished attempts), as the policy says.
        quarantined = [r[0] for r in db.rows(
            "SELECT id FROM inbound_message WHERE status = 'quarantined' AND error = 'too_many_attempts'")]
        if quarantined:
            out = subprocess.run([sys.executable, "-m", "escalations", "quarantine", "replay", "--json",
                                  *map(str, quarantined)], env=service.env, capture_output=True, timeout=120)
            assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
            wait_until(settled, timeout=60, what="replayed referrals settled", interval=0.25)
    finally:
        stop_feeding.set()
        service.stop()
    elapsed = time.monotonic() - started

    # ---- what happened ------------------------------------------------------------------------------
    inbound = db.rows("SELECT id, message_id, status, case_id, attempts, error FROM inbound_message")
    by_mid = {r[1]: r for r in inbound}
    assert sorted(by_mid) == sorted(r.message_id for r in todo)
    assert all(r[2] == "done" for r in inbound), [r for r in inbound if r[2] != "done"]
    cases = db.rows('SELECT id, origin_message_id FROM "case"')
    assert Counter(c[1] for c in cases) == Counter({r.message_id: 1 for r in todo}), "one case per referral"
    # No case change applied twice. A change applied again would repeat its event exactly (events are
    # dated at their own time: the message's receipt, the timer's due time); and the one-off changes
    # happen once per case, or once per stage. (A referral whose "needed by" date has passed climbs
    # the ladder at once: several stage_opened rows, one per stage, each with a deadline_set row that
    # names no stage and may repeat the same instant: those are checked through stage_opened.)
    rows = db.rows("SELECT case_id, kind, at, detail, inbound_id FROM case_event")
    repeated = {k: n for k, n in Counter((r[0], r[1], str(r[2]), str(r[3]), r[4]) for r in rows
                                         if r[1] != "deadline_set").items() if n > 1}
    assert not repeated, f"case changes applied more than once: {repeated}"
    per_stage = Counter((r[0], r[1], _stage_of(r[3])) for r in rows if r[1] in ("stage_opened", "escalated"))
    assert all(n == 1 for n in per_stage.values()), {k: n for k, n in per_stage.items() if n > 1}
    once = Counter(r[0] for r in rows if r[1] == "case_opened")
    assert once == Counter({c[0]: 1 for c in cases})
    # One acknowledgement per recipient: the sender, and for a forwarded referral (Wiltshire's sample)
    # the practitioner named in it as well.
    ack_to = Counter((r[0], str(_detail(r[3]).get("to"))) for r in rows if r[1] == "acknowledgement_queued")
    assert all(n == 1 for n in ack_to.values()), ack_to
    expected_acks = Counter(r[0] for r in rows if r[1] == "acknowledgement_queued")
    assert set(expected_acks) == {c[0] for c in cases}, "every referral acknowledged"
    acks = db.rows("SELECT case_id, message_id FROM outbox WHERE template LIKE 'referral_%'")
    assert Counter(a[0] for a in acks) == expected_acks, "one acknowledgement per referral and recipient"
    got = relay.snapshot()
    received_ids = Counter(m.message_id for m in got)
    assert all(received_ids[a[1]] >= 1 for a in acks), "an acknowledgement never reached the relay"
    sent_rows = db.rows("SELECT message_id, sent_at FROM outbox")
    assert {m for m, _ in sent_rows} == set(received_ids), "the relay got exactly the outbox's mail"
    flags = dovecot.flags()
    assert len(flags) == sum(r.via == "imap" for r in todo) and all("\\Seen" in f for f in flags.values())
    assert stranded_out <= {m for m, _ in sent_rows}
    sent_at = {m: _aware(s).timestamp() for m, s in sent_rows if s is not None}
    assert all(sent_at[m] >= restarted for m in stranded_out), "stranded mail is sent by the restarted service"

    # ---- figures (printed, not asserted) -----------------------------------------------------------
    delays = sorted(sent_at[m] - restarted for m in stranded_out)
    duplicates = {m: n for m, n in received_ids.items() if n > 1}
    dup_templates = Counter(next(x.template for x in got if x.message_id == m) for m in duplicates)
    attempts = Counter(r[4] for r in inbound)
    first_ack: dict[str, float] = {}
    for m in got:
        if m.template.startswith("referral_") and m.in_reply_to not in first_ack:
            first_ack[m.in_reply_to] = m.at
    ack_delay = sorted(first_ack[r.message_id] - submitted[r.message_id] for r in todo if r.message_id in first_ack)
    print(f"\ncrash harness (seed {SEED}, {'PostgreSQL' if 'postgresql' in crash_database_url else 'SQLite'}): "
          f"{REFERRALS} referrals ({sum(r.via == 'imap' for r in todo)} by IMAP, "
          f"{sum(r.via == 'smtp' for r in todo)} by SMTP), {KILLS} SIGKILLs, {elapsed:.0f} s")
    print(f"  cases {len(cases)}, acknowledgements {len(acks)}, outbox rows {len(sent_rows)}, "
          f"messages at the relay {len(got)}")
    print(f"  duplicates by Message-ID: {len(duplicates)} message(s) received twice or more "
          f"({sum(duplicates.values()) - len(duplicates)} extra copies; templates {dict(dup_templates)})")
    print(f"  stranded by the last kill: {len(stranded_out)} outbox row(s), {stranded_in} inbound message(s); "
          f"all of that mail out {delays[-1]:.1f} s after the last restart (the first {delays[0]:.1f} s)"
          if delays else f"  stranded by the last kill: none in the outbox, {stranded_in} inbound message(s)")
    print(f"  timers firing at the last kill: {stranded_timers}")
    if ack_delay:
        print(f"  acknowledgement after its referral was offered: median {ack_delay[len(ack_delay) // 2]:.1f} s, "
              f"worst {ack_delay[-1]:.1f} s, {sum(d > 60 for d in ack_delay)} of {len(ack_delay)} later than 60 s")
    print(f"  everything settled {settled_after:.1f} s after the last restart; processing attempts per "
          f"message {dict(sorted(attempts.items()))}; quarantined by too_many_attempts and replayed: "
          f"{len(quarantined)}")
