#!/usr/bin/env python3
"""Ingest benchmark: how fast the service catches up on a full mailbox, against a raw baseline.

    .venv/bin/python bench/ingest.py                 # N=2000 referrals, 200 IDLE latency samples
    .venv/bin/python bench/ingest.py --smoke         # CI: N=50, 10 samples, well under a minute
    .venv/bin/python bench/ingest.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test --json

What it does, all on loopback (ARCHITECTURE "Testing": real servers, figures against a baseline
measured in the same run, never asserted):

1. Starts an unprivileged Dovecot (tests/servers/dovecot.py) and a capturing aiosmtpd relay
   (tests/servers/smtp.py, with a handler that time-stamps each message), then APPENDs the same N
   distinct City & Hackney referrals to INBOX (for the service) and to a folder "Baseline".
2. (b) baseline, in a child process: IMAPClient login, SELECT, batch FETCH RFC822, stdlib
   ``email`` parse, plain sqlite3 insert (one transaction per batch), one smtplib connection sending
   one fixed reply per message to the relay.
3. (a) pipeline, in another child process (so its peak RSS, VmHWM, is its own): ``build_app`` with the
   mailbox and the relay configured, ``App.run``; elapsed = from just before ``App.run`` until the
   relay has captured the N-th ``referral_acknowledged`` mail. Then waits for the outbox to drain.
4. (d) IDLE latency, the service still running and idle: APPEND single referrals one at a time;
   for each, APPEND returned -> acknowledgement row in the outbox table (polled every 2 ms from this
   process), and APPEND returned -> EXISTS seen by a separate IMAPClient in IDLE (the server's own
   notification delay).
5. Checks correctness (exactly one case and one acknowledgement per referral, all inbound mail
   done, every outbox row sent once) and prints msgs/s, the ratio, peak RSS and latency
   percentiles, with "target met"/"target missed" for each target.

Exit status: 0 when the run was correct, whatever the figures; 1 when something is broken
(missing or duplicate cases/acks, quarantined mail, a child that died, a stalled pipeline);
2 when Dovecot is missing under CI=true. Without Dovecot and outside CI it skips with status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `tests.servers.*` and a source-checkout `escalations`

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from tests.servers.dovecot import DovecotServer

# ---- targets (from the issue) --------------------------------------------------------------

TARGET_RATIO = 0.7
TARGET_LATENCY_MARGIN_MS = 50.0
TARGET_RSS_MIB = 100.0
TARGET_CPU_MS = 6.0
TARGET_EQUAL_RATIO = 0.5
TARGET_PEER_RATIO = 3.0
TARGET_BYTES_PER_CASE = 8 * 1024
#: Seconds between single messages APPENDed while a backlog is processed (jittered +-50 %). At 0.25 a
#: 1,000-message backlog (about 6 s) gave 14-20 samples, so its p99 was the slowest one; at 0.1 it gives
#: 40 or more, and the singles add about 10 msg/s to a backlog processed at about 170.
LOAD_INTERVAL = 0.1

ACK_TEMPLATE = "referral_acknowledged"
MAILBOX = "chscp@hackney.gov.uk"
BASELINE_FOLDER = "Baseline"
EQUAL_FOLDER = "Equal"
PROTOCOL_PREFIX = "BENCH "
FETCH_BATCH = 100
#: The pipeline is "stalled" (broken) when none of its counters moves for this long.
STALL_SECONDS = 60.0


class Broken(Exception):
    """The benchmark found the service (or itself) not working: exit non-zero."""


def progress(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def compile_like_installed() -> None:
    """Write the bytecode of our package, as pip does when it installs one, before anything is timed.

    This checkout is an editable install, so its bytecode is only what Python wrote on earlier imports,
    and none at all where ``PYTHONDONTWRITEBYTECODE`` is set (it is on this workplace's machines): each
    child then compiled every module of ours from source, while the peer's and the libraries' code,
    installed by pip, came compiled. That cost us ~0.3 s per process start (``cases list`` 0.92 s
    against 0.55 s) and the parse worker's start in the CPU per referral. Python still reads bytecode
    with the variable set; ``compileall`` writes it regardless (``__pycache__`` is ignored by git)."""
    import compileall

    if not compileall.compile_dir(str(REPO / "escalations"), quiet=1):  # a read-only checkout, say
        progress("could not write the bytecode of escalations/ (see above): start-up figures include compiling it")


# ---- referrals ---------------------------------------------------------------------------------

FIRST_NAMES = (
    "Ava", "Noah", "Amara", "Leo", "Zainab", "Oscar", "Maya", "Yusuf", "Isla", "Kofi", "Ruby", "Mateo",
    "Aisha", "Theo", "Freya", "Ibrahim", "Lily", "Jayden", "Mia", "Arlo", "Hana", "Elijah", "Sofia", "Kai",
)
#: (first name, role, agency as written, mail domain) of practitioners who raise differences. Each
#: referral gets its own address: the outbox caps mails per address per hour (loop protection), and
#: one practitioner sending thousands of referrals in a burst is not the load being measured.
RAISERS = (
    ("Priya", "School Designated Safeguarding Lead", "Hackney Education", "school.example.org"),
    ("Tom", "Health Visitor", "Homerton Healthcare NHS Foundation Trust", "nhs.example.net"),
    ("Grace", "Detective Constable", "Metropolitan Police Service", "police.example.org"),
    ("Sam", "Housing Officer", "Hackney Council Housing Services", "housing.example.org"),
    ("Chidi", "Probation Officer", "Probation Service (London)", "probation.example.net"),
    ("Lena", "Community Psychiatric Nurse", "East London NHS Foundation Trust", "elft.example.net"),
    ("Owen", "Head Teacher", "Hackney Education", "academy.example.org"),
    ("Fatima", "School Nurse", "Homerton Healthcare NHS Foundation Trust", "nhs.example.net"),
)
OTHER_AGENCIES = (
    ("Hackney Children and Families Service", "Sam Smith (duty social worker)"),
    ("City of London Children's Social Care", "Alex Jones (team manager)"),
    ("Metropolitan Police Service", "DS Morgan (MASH)"),
    ("Hackney Children and Families Service", "Jordan Lee (social worker)"),
)
STATUSES = ("Child in need", "Child protection plan", "Looked after", "None")
CONCERNS = (
    "{first} disclosed that an adult at home hit them. Our referral to the MASH was closed the same day "
    "with no further action and no strategy discussion.",
    "Repeated missed health appointments and weight loss for {first}; the case was stepped down to "
    "early help without a home visit.",
    "{first} has been missing from home three times this month; the return interviews were not "
    "shared and the case was closed.",
    "Domestic abuse notifications for {first}'s household were not progressed to an assessment.",
)


def _letters(i: int) -> str:
    out = ""
    i += 26 * 26  # at least three letters
    while i:
        i, r = divmod(i, 26)
        out = chr(ord("a") + r) + out
    return out


def make_referral(i: int, run_id: str) -> tuple[str, bytes]:
    """A complete, distinct referral (its Message-ID, child, raiser and wording vary with i)."""
    first = FIRST_NAMES[i % len(FIRST_NAMES)]
    child = f"{first} Test{_letters(i)}"
    raiser_first, role, agency, domain = RAISERS[i % len(RAISERS)]
    surname = f"Example{_letters(i // len(RAISERS))}"
    name, email = f"{raiser_first} {surname}", f"{raiser_first.lower()}.{surname.lower()}@{domain}"
    other_agency, other_practitioner = OTHER_AGENCIES[i % len(OTHER_AGENCIES)]
    dob = date(2009, 1, 1) + timedelta(days=(i * 37) % 5400)
    message_id = f"bench-{run_id}-{i}@bench.example.org"
    msg = EmailMessage()
    msg["From"] = f"{name} <{email}>"
    msg["To"] = f"CHSCP <{MAILBOX}>"
    msg["Subject"] = f"Professional difference - {child}"
    msg["Date"] = format_datetime(datetime.now(UTC) - timedelta(minutes=i % 600))
    msg["Message-ID"] = f"<{message_id}>"
    msg.set_content(
        "Dear CHSCP business unit,\n\n"
        "I am raising a professional difference under the Resolving Professional Difference policy.\n\n"
        f"Name of child(ren): {child}\n"
        f"Date of birth: {dob:%d/%m/%Y}\n"
        f"Child status: {STATUSES[i % len(STATUSES)]}\n"
        f"Name of referrer: {name}\n"
        f"Role: {role}\n"
        f"Agency: {agency}\n"
        f"Email: {email}\n"
        f"Other agency: {other_agency}\n"
        f"Other practitioner: {other_practitioner}\n\n"
        "Brief description of nature of concern:\n"
        f"{CONCERNS[i % len(CONCERNS)].format(first=first)}\n\n"
        "Action taken: I spoke to the duty worker and my manager emailed the team manager. "
        "No change to the decision.\n"
        "Outcome sought: A strategy discussion and a child and family assessment.\n"
        "Is the child at immediate risk? No\n\n"
        f"Kind regards,\n{name}\n{role}\n"
    )
    return message_id, bytes(msg)


# ---- the capturing relay, with arrival times ---------------------------------------------------

_TEMPLATE_RE = re.compile(rb"^X-Escalations-Template:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_MESSAGE_ID_RE = re.compile(rb"^Message-ID:\s*<([^>\s]+)>", re.IGNORECASE | re.MULTILINE)  # may be folded


@dataclass(frozen=True)
class Arrival:
    at: float  # time.monotonic() in this process
    template: str
    message_id: str


class TimedRelay:
    """tests/servers/smtp.py's SmtpCapture with a handler that notes when each message arrived."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP, Envelope, Session

        from tests.servers.smtp import CapturingHandler, SmtpCapture

        arrivals: list[Arrival] = []
        self.arrivals = arrivals

        class TimedHandler(CapturingHandler):
            async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
                reply = await super().handle_DATA(server, session, envelope)
                if reply.startswith("250"):
                    at = time.monotonic()
                    head = (envelope.original_content or b"").split(b"\r\n\r\n", 1)[0]
                    tm, mm = _TEMPLATE_RE.search(head), _MESSAGE_ID_RE.search(head)
                    with self.lock:
                        arrivals.append(Arrival(at, tm.group(1).decode() if tm else "",
                                                mm.group(1).decode() if mm else ""))
                return reply

        self.capture = SmtpCapture()
        self.capture.handler = TimedHandler()
        self.capture.controller = Controller(self.capture.handler, hostname=self.capture.host,
                                             port=self.capture.port, decode_data=False)
        self.port = self.capture.port

    def start(self) -> None:
        self.capture.controller.start()

    def stop(self) -> None:
        self.capture.controller.stop()

    def snapshot(self) -> list[Arrival]:
        with self.capture.handler.lock:
            return list(self.arrivals)

    def count(self, template: str | None = None) -> int:
        with self.capture.handler.lock:
            if template is None:
                return len(self.arrivals)
            return sum(1 for a in self.arrivals if a.template == template)


# ---- database look (from this process, never through the service) -----------------------------


class DbWatch:
    """Read-only counts from the service's database, polled while the service runs."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self._sa = sa
        connect_args: dict[str, Any] = {"timeout": 30} if url.startswith("sqlite") else {}
        self.engine: Engine = sa.create_engine(url, connect_args=connect_args, hide_parameters=True)

    def scalar(self, sql: str, **params: Any) -> int:
        with self.engine.connect() as c:
            return int(c.execute(self._sa.text(sql), params).scalar() or 0)

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.engine.connect() as c:
            return [tuple(r) for r in c.execute(self._sa.text(sql), params).all()]

    def ack_rows(self) -> int:
        return self.scalar("SELECT count(*) FROM outbox WHERE template = :t", t=f"{ACK_TEMPLATE}.txt.j2")

    def counts(self) -> dict[str, int]:
        (inbound, pending, done, quarantined), = self.rows(
            "SELECT count(*), "
            "coalesce(sum(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0), "
            "coalesce(sum(CASE WHEN status = 'done' THEN 1 ELSE 0 END), 0), "
            "coalesce(sum(CASE WHEN status = 'quarantined' THEN 1 ELSE 0 END), 0) FROM inbound_message")
        (outbox, sent, failed), = self.rows(
            "SELECT count(*), coalesce(sum(CASE WHEN status = 'sent' THEN 1 ELSE 0 END), 0), "
            "coalesce(sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0) FROM outbox")
        return {"inbound": int(inbound), "pending": int(pending), "done": int(done),
                "quarantined": int(quarantined), "outbox": int(outbox), "outbox_sent": int(sent),
                "outbox_failed": int(failed)}

    def dispose(self) -> None:
        self.engine.dispose()


@contextlib.contextmanager
def bench_database(url: str | None, tmp: Path) -> Iterator[str]:
    """A fresh database for the service: a temp SQLite file, or a new schema on PostgreSQL."""
    if not url:
        yield f"sqlite:///{tmp / 'escalations.sqlite3'}"
        return
    if url.startswith("sqlite"):
        yield url
        return
    import sqlalchemy as sa

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        admin.dispose()
        raise Broken(f"cannot create a schema at {url.split('@')[-1]}: {type(exc).__name__}: {exc}") from exc
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with contextlib.suppress(Exception), admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


# ---- child processes ---------------------------------------------------------------------------


def emit(event: str, **data: Any) -> None:
    """One protocol line from a child to the parent (stdout is reserved for these)."""
    sys.stdout.write(PROTOCOL_PREFIX + json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def max_rss_kib() -> int:
    """This process's own peak RSS in KiB.

    Linux's ru_maxrss is not it for a spawned child: exec keeps the larger of the old and new
    high-water marks, and the old address space is the parent's (vfork) or a copy of it (fork), so a
    child's ru_maxrss starts at the parent's RSS. VmHWM is the high-water mark of the current address
    space only; ru_maxrss is the fallback where /proc is missing.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])  # "VmHWM:   95208 kB"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def current_rss_kib() -> int:
    """This process's resident set now (VmRSS), 0 where /proc is missing."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    """User + system CPU of this process so far (getrusage: independent of what else the machine runs)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _proc_stat_cpu(pid: int) -> tuple[float, int] | None:
    """(utime + stime + cutime + cstime in seconds, parent pid) of a live process; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except (OSError, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is fields[0]
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(f) for f in fields[11:15]) / ticks, int(fields[1])


def tree_cpu_seconds() -> tuple[float, float]:
    """(this process, its live and reaped descendants): user + system CPU so far.

    The service parses mail in a worker process (escalations/sandbox.py), so the CPU a referral
    costs is the whole tree's, not ``RUSAGE_SELF`` alone."""
    own = cpu_seconds()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    descendants = reaped.ru_utime + reaped.ru_stime
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found = _proc_stat_cpu(int(entry.name))
            if found is not None:
                cpu[int(entry.name)], parents[int(entry.name)] = found
    mine = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in mine and pid not in mine:
                mine.add(pid)
                grew = True
    descendants += sum(cpu[pid] for pid in mine if pid != os.getpid())
    return own, descendants


def tree_rss_kib() -> int:
    """VmRSS of this process's live descendants (the parse worker), KiB."""
    total = 0
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        found = _proc_stat_cpu(int(entry.name))
        if found is None or found[1] != me:
            continue
        with contextlib.suppress(OSError, ValueError):
            for line in (entry / "status").read_text(encoding="ascii").splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def child_baseline(cfg: dict[str, Any]) -> None:
    """(b) The raw baseline: fetch, parse, insert, reply, with nothing but the libraries."""
    import email
    import email.policy
    import smtplib
    import sqlite3

    from imapclient import IMAPClient

    reply = EmailMessage()
    reply["From"] = f"CHSCP <{MAILBOX}>"
    reply["Subject"] = "Your referral was received"
    reply["Auto-Submitted"] = "auto-replied"
    reply["X-Escalations-Template"] = "baseline_reply"
    reply.set_content("Thank you. Your referral has been received and will be acknowledged with a reference.\n")
    fixed = reply.as_bytes(policy=email.policy.SMTP)

    t0, cpu0 = time.monotonic(), cpu_seconds()
    imap = IMAPClient(cfg["host"], cfg["port"], ssl=False, timeout=30)
    imap.login(cfg["user"], cfg["password"])
    uidvalidity = int(imap.select_folder(cfg["folder"], readonly=True)[b"UIDVALIDITY"])
    uids = sorted(int(u) for u in imap.search(["UID", "1:*"]))
    db = sqlite3.connect(cfg["sqlite_path"])
    db.execute("CREATE TABLE message (key TEXT PRIMARY KEY, raw BLOB NOT NULL, subject TEXT)")
    db.commit()
    smtp = smtplib.SMTP("127.0.0.1", cfg["relay_port"], timeout=30)
    smtp.ehlo()
    sent = 0
    for start in range(0, len(uids), cfg["batch"]):
        batch = uids[start:start + cfg["batch"]]
        fetched = imap.fetch(batch, ["RFC822"])
        rows: list[tuple[str, bytes, str]] = []
        reply_to: list[str] = []
        for uid in batch:
            raw = bytes(fetched[uid][b"RFC822"])
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            rows.append((f"{uidvalidity}:{uid}", raw, str(msg["subject"] or "")))
            sender = msg["from"]
            addresses = getattr(sender, "addresses", ())
            reply_to.append(addresses[0].addr_spec if addresses else "unknown@example.org")
        with db:  # one transaction per batch
            db.executemany("INSERT INTO message (key, raw, subject) VALUES (?, ?, ?)", rows)
        for rcpt in reply_to:  # after the commit, as the service does
            smtp.sendmail(MAILBOX, [rcpt], fixed)
            sent += 1
    smtp.quit()
    imap.logout()
    t1, cpu = time.monotonic(), cpu_seconds() - cpu0
    stored = int(db.execute("SELECT count(*) FROM message").fetchone()[0])
    db.close()
    emit("result", t0=t0, t1=t1, cpu_s=cpu, fetched=len(uids), stored=stored, sent=sent, maxrss_kib=max_rss_kib(),
         ru_maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _install_thread_profiler(profiles: list[tuple[str, Any]]) -> None:
    """Run every thread started from now on under its own cProfile (Python 3.11: per-thread hooks)."""
    import cProfile

    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        profiles.append((self.name, prof))
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    threading.Thread.run = run  # type: ignore[method-assign]


def child_pipeline(cfg: dict[str, Any]) -> None:
    """(a)+(d) The service itself: App.run with the mailbox and the relay; commands on stdin."""
    from escalations.app import build_app
    from escalations.logs import configure_logging
    from escalations.settings import MailboxSettings, RelaySettings, Settings

    configure_logging("json")  # production-like INFO logging, to stderr (a file the parent reads)
    settings = Settings(  # type: ignore[call-arg]  # config_dir: populated by name, aliased for the env
        data_dir=Path(cfg["data_dir"]),
        config_dir=Path(cfg["config_dir"]),
        database_url=cfg["database_url"],
        process_interval_seconds=float(cfg.get("process_interval_seconds") or 5.0),  # the default unless asked
        smtp_listen_port=0,
        relay=RelaySettings(host="127.0.0.1", port=cfg["relay_port"], security="none"),
        mailboxes=[MailboxSettings.model_validate(cfg["mailbox"])],
    )
    app = build_app(settings, schema_in_child=True)  # as `escalations run` builds it: no Alembic held
    profiles: list[tuple[str, Any]] = []
    if cfg.get("profile"):
        _install_thread_profiler(profiles)
    stop, started = threading.Event(), threading.Event()
    t0 = time.monotonic()
    runner = threading.Thread(target=app.run, args=(stop,),  # as `escalations run` runs it
                              kwargs={"on_started": lambda _a: started.set(), "freeze_heap": True},
                              name="app-run", daemon=True)
    runner.start()
    if not started.wait(60):
        emit("error", message="service did not start within 60 s")
        return
    own, workers = tree_cpu_seconds()
    emit("started", t0=t0, smtp_port=app.smtp_port, cpu_s=own + workers, worker_cpu_s=workers)
    for line in sys.stdin:
        command = line.strip()
        if command == "rss":
            own, workers = tree_cpu_seconds()
            emit("rss", maxrss_kib=max_rss_kib(), cpu_s=own + workers, worker_cpu_s=workers,
                 rss_kib=current_rss_kib(), worker_rss_kib=tree_rss_kib())
        elif command == "stop":
            break
    stop.set()
    runner.join(30)
    if cfg.get("profile"):
        import pstats

        alive = {t.name for t in threading.enumerate() if t.is_alive()}
        by_thread: dict[str, pstats.Stats] = {}
        for name, prof in profiles:
            if name in alive:
                continue  # still running (a library's daemon thread): its profile is not closed
            if name in by_thread:
                by_thread[name].add(prof)
            else:
                by_thread[name] = pstats.Stats(prof)
        for name, stats in by_thread.items():
            stats.dump_stats(f"{cfg['profile']}.{re.sub(r'[^A-Za-z0-9_-]+', '_', name)}")
    app.store.engine.dispose()
    emit("result", maxrss_kib=max_rss_kib(), ru_maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
         stopped=not runner.is_alive())


class Child:
    """A child process of this script speaking the line protocol; stderr goes to a log file."""

    def __init__(self, role: str, cfg: dict[str, Any], log_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESCALATIONS_")}  # no stray settings
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", role],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env, cwd=str(REPO),
        )
        self.role = role
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"{role}-reader", daemon=True)
        self._reader.start()
        self.send(json.dumps(cfg))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL_PREFIX):
                with contextlib.suppress(ValueError):
                    self.events.put(json.loads(line[len(PROTOCOL_PREFIX):]))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise Broken(f"{self.role} process is gone ({exc}){self.log_tail()}") from exc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Broken(f"{self.role}: no '{event}' within {timeout:.0f} s{self.log_tail()}")
            try:
                got = self.events.get(timeout=min(0.2, remaining))
            except queue.Empty:
                if not self.alive() and self.events.empty():
                    raise Broken(f"{self.role} process exited with {self.proc.returncode} "
                                 f"before '{event}'{self.log_tail()}") from None
                continue
            if got.get("event") == "error":
                raise Broken(f"{self.role}: {got.get('message')}{self.log_tail()}")
            if got.get("event") == event:
                return got

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return ("\n--- " + self.log_path.name + " (last lines) ---\n" + "\n".join(text[-lines:])) if text else ""

    def close(self, timeout: float = 30.0) -> None:
        with contextlib.suppress(Exception):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait(timeout=10)
        self._log.close()


# ---- figures -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def verdict(ok: bool) -> str:
    return "target met" if ok else "target missed"


@dataclass
class Results:
    n: int
    samples: int
    database: str
    dovecot_version: str
    append_seconds: float = 0.0
    baseline: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    equal: dict[str, Any] = field(default_factory=dict)
    snapshot_rows: dict[str, int] = field(default_factory=dict)
    database_size: dict[str, Any] = field(default_factory=dict)
    latency_load: dict[str, Any] = field(default_factory=dict)
    peer: list[dict[str, Any]] = field(default_factory=list)


# ---- phases ------------------------------------------------------------------------------------


def run_baseline(dovecot: DovecotServer, relay: TimedRelay, tmp: Path, n: int) -> dict[str, Any]:
    progress(f"(b) baseline: FETCH+parse+sqlite+SMTP of {n} messages in a child process")
    before = relay.count("baseline_reply")
    child = Child("baseline", {
        "host": dovecot.host, "port": dovecot.port, "user": dovecot.user, "password": dovecot.password,
        "folder": BASELINE_FOLDER, "relay_port": relay.port, "sqlite_path": str(tmp / "baseline.sqlite3"),
        "batch": FETCH_BATCH,
    }, tmp / "baseline.log")
    try:
        result = child.expect("result", timeout=max(120.0, n * 0.1))
    finally:
        child.close()
    if child.proc.returncode != 0:
        raise Broken(f"baseline process exited with {child.proc.returncode}{child.log_tail()}")
    replies = relay.count("baseline_reply") - before
    if not (result["fetched"] == result["stored"] == result["sent"] == replies == n):
        raise Broken(f"baseline did not handle all {n} messages: fetched {result['fetched']}, stored "
                     f"{result['stored']}, sent {result['sent']}, relay captured {replies}")
    elapsed = result["t1"] - result["t0"]
    out = {"seconds": elapsed, "msgs_per_s": n / elapsed, "maxrss_kib": result["maxrss_kib"],
           "cpu_s": result["cpu_s"], "cpu_ms_per_referral": result["cpu_s"] * 1000 / n,
           "ru_maxrss_kib": result["ru_maxrss_kib"]}
    progress(f"(b) baseline: {n} in {elapsed:.2f} s = {n / elapsed:.0f} msgs/s")
    return out


def last_quarantine(db: DbWatch) -> str:
    """The error of the newest quarantined message (synthetic mail: nothing private in it)."""
    rows = db.rows("SELECT error FROM inbound_message WHERE status = 'quarantined' ORDER BY id DESC LIMIT 1")
    return str(rows[0][0]) if rows else "?"


def wait_catch_up(child: Child, db: DbWatch, relay: TimedRelay, n: int, t0: float) -> dict[str, Any]:
    """Until the relay has N acknowledgements; notes when all were stored and processed."""
    stored_at = processed_at = None
    last_state: tuple[int, ...] = ()
    last_change = last_print = time.monotonic()
    while True:
        acks = relay.count(ACK_TEMPLATE)
        now = time.monotonic()
        if now - last_print >= 0.25 or acks >= n:
            c = db.counts()
            if stored_at is None and c["inbound"] >= n:
                stored_at = now - t0
            if processed_at is None and c["inbound"] >= n and c["pending"] == 0:
                processed_at = now - t0
            state = (c["inbound"], c["done"], c["quarantined"], c["outbox_sent"], acks)
            if state != last_state:
                last_state, last_change = state, now
            if c["quarantined"]:
                raise Broken(f"{c['quarantined']} referral(s) quarantined during catch-up, the last: "
                             f"{last_quarantine(db)}{child.log_tail()}")
            if now - last_change > STALL_SECONDS:
                due, deferred = outbox_waiting(db)
                raise Broken(f"pipeline stalled for {STALL_SECONDS:.0f} s: stored {c['inbound']}/{n}, "
                             f"processed {c['done']}/{n}, acks captured {acks}/{n}, outbox rows due {due}, "
                             f"deferred {deferred}{child.log_tail()}")
            if now - last_print >= 2.0 or acks >= n:
                progress(f"(a) pipeline {now - t0:6.1f} s: stored {c['inbound']}/{n} processed {c['done']}/{n} "
                         f"outbox sent {c['outbox_sent']}/{c['outbox']} acks captured {acks}/{n}")
                last_print = now
        if acks >= n:
            break
        if not child.alive():
            raise Broken(f"pipeline process exited with {child.proc.returncode}{child.log_tail()}")
        time.sleep(0.01)
    arrivals = sorted(a.at for a in relay.snapshot() if a.template == ACK_TEMPLATE)
    return {"stored_all_s": stored_at, "processed_all_s": processed_at, "first_ack_s": arrivals[0] - t0,
            "nth_ack_at": arrivals[n - 1]}


def _as_utc(value: Any) -> datetime | None:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def outbox_waiting(db: DbWatch) -> tuple[int, int]:
    """(rows due now or being sent, rows deferred to a later time: retry backoff or per-address cap)."""
    now = datetime.now(UTC) + timedelta(seconds=1)
    due = deferred = 0
    for status, at in db.rows("SELECT status, next_attempt_at FROM outbox WHERE status IN ('pending', 'sending')"):
        when = _as_utc(at)
        if status == "sending" or when is None or when <= now:
            due += 1
        else:
            deferred += 1
    return due, deferred


def wait_drained(db: DbWatch, relay: TimedRelay, relay_before: int, timeout: float) -> dict[str, int]:
    """Until no outbox row is due and the relay holds one message per sent row."""
    deadline = time.monotonic() + timeout
    while True:
        c = db.counts()
        captured = relay.count() - relay_before
        if c["pending"] == 0 and captured >= c["outbox_sent"]:
            settled = c["outbox_sent"] + c["outbox_failed"] == c["outbox"]
            due, deferred = (0, 0) if settled else outbox_waiting(db)
            # unsettled: the counts must still hold after that second look (a row sent in between)
            if due == 0 and (settled or (db.counts() == c and relay.count() - relay_before == captured)):
                return {**c, "captured": captured, "deferred": deferred}
        if time.monotonic() > deadline:
            raise Broken(f"outbox did not drain within {timeout:.0f} s: {c}, relay captured {captured}")
        time.sleep(0.005)


class IdleListener:
    """A separate IMAPClient in IDLE on INBOX: when does the server announce a new message?"""

    def __init__(self, dovecot: DovecotServer) -> None:
        from imapclient import IMAPClient

        self.client = IMAPClient(dovecot.host, dovecot.port, ssl=False, timeout=30)
        self.client.login(dovecot.user, dovecot.password)
        self.client.select_folder("INBOX", readonly=True)
        self.exists: queue.Queue[tuple[float, int]] = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="idle-listener", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise Broken("IDLE listener did not start")

    def _run(self) -> None:
        try:
            self.client.idle()
            self._ready.set()
            renew = time.monotonic() + 600
            while not self._stop.is_set():
                for resp in self.client.idle_check(timeout=0.2):
                    if len(resp) >= 2 and resp[1] == b"EXISTS":
                        self.exists.put((time.monotonic(), int(resp[0])))
                if time.monotonic() > renew:  # stay well inside RFC 2177's 29 minutes
                    self.client.idle_done()
                    self.client.idle()
                    renew = time.monotonic() + 600
            self.client.idle_done()
        except BaseException as exc:  # reported by the phase
            self._error = exc
            self._ready.set()

    def drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.exists.get_nowait()

    def next_exists(self, count: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            if self._error is not None:
                raise Broken(f"IDLE listener failed: {type(self._error).__name__}: {self._error}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Broken(f"the server announced no EXISTS {count} within {timeout:.0f} s")
            with contextlib.suppress(queue.Empty):
                at, exists = self.exists.get(timeout=min(0.2, remaining))
                if exists >= count:
                    return at

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self.client.logout()


def run_latency(dovecot: DovecotServer, db: DbWatch, relay: TimedRelay, relay_base: int, child: Child,
                run_id: str, first_index: int, samples: int) -> dict[str, Any]:
    progress(f"(d) IDLE latency: {samples} single APPENDs, one at a time")
    listener = IdleListener(dovecot)
    pipeline_ms: list[float] = []
    notify_ms: list[float] = []
    rng = random.Random(7)
    try:
        with dovecot.client(timeout=30) as appender:
            exists = int(appender.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"])
            for k in range(samples):
                if not child.alive():
                    raise Broken(f"pipeline process exited with {child.proc.returncode}{child.log_tail()}")
                _mid, raw = make_referral(first_index + k, run_id)
                acks_before = db.ack_rows()
                quarantined = db.counts()["quarantined"]
                listener.drain()
                appender.append("INBOX", raw)
                appended = time.monotonic()
                exists += 1
                deadline = appended + 30
                polls = 0
                while db.ack_rows() <= acks_before:
                    polls += 1
                    if polls % 50 == 0 and db.counts()["quarantined"] > quarantined:
                        raise Broken(f"latency sample {k}: the referral was quarantined: "
                                     f"{last_quarantine(db)}{child.log_tail()}")
                    if time.monotonic() > deadline:
                        raise Broken(f"latency sample {k}: no acknowledgement queued within 30 s{child.log_tail()}")
                    time.sleep(0.002)
                queued = time.monotonic()
                announced = listener.next_exists(exists, timeout=30)
                pipeline_ms.append((queued - appended) * 1000)
                notify_ms.append((announced - appended) * 1000)
                # Let the service go idle again (its mail sent) before the next sample.
                wait_drained(db, relay, relay_base, timeout=30)
                time.sleep(rng.uniform(0.0, 0.02))
                if (k + 1) % max(1, samples // 10) == 0:
                    progress(f"(d) {k + 1}/{samples}: last append->ack {pipeline_ms[-1]:.1f} ms, "
                             f"append->EXISTS {notify_ms[-1]:.1f} ms")
    finally:
        listener.close()
    return latency_figures(pipeline_ms, notify_ms)


def latency_figures(pipeline_ms: list[float], notify_ms: list[float]) -> dict[str, Any]:
    diffs = [p - q for p, q in zip(pipeline_ms, notify_ms, strict=True)]
    return {
        "samples": len(pipeline_ms),
        "append_to_ack_queued_ms": {"p50": percentile(pipeline_ms, 50), "p99": percentile(pipeline_ms, 99),
                                    "max": max(pipeline_ms), "mean": statistics.fmean(pipeline_ms)},
        "append_to_exists_ms": {"p50": percentile(notify_ms, 50), "p99": percentile(notify_ms, 99),
                                "max": max(notify_ms), "mean": statistics.fmean(notify_ms)},
        "paired_difference_ms": {"p50": percentile(diffs, 50), "p99": percentile(diffs, 99)},
    }


class LoadPhase:
    """(e) IDLE latency while a backlog is being processed: after APPENDing the backlog, single
    referrals are APPENDed every ``LOAD_INTERVAL`` s until it is done; a poller thread notes when each
    one's own acknowledgement row appears (found by its Message-ID), the IDLE listener when Dovecot
    announced it."""

    def __init__(self, dovecot: DovecotServer, db: DbWatch, relay: TimedRelay, relay_base: int, child: Child,
                 run_id: str) -> None:
        self.dovecot, self.db, self.relay, self.relay_base = dovecot, db, relay, relay_base
        self.child, self.run_id = child, run_id
        self.lock = threading.Lock()
        self.appended: dict[str, tuple[float, int]] = {}  # Message-ID -> (APPEND returned, EXISTS count)
        self.acked: dict[str, float] = {}

    def acked_now(self, ids: list[str]) -> set[str]:
        marks = {f"m{i}": f"<{m}>" for i, m in enumerate(ids)} | {f"b{i}": m for i, m in enumerate(ids)}
        rows = self.db.rows(
            'SELECT c.origin_message_id FROM outbox o JOIN "case" c ON o.case_id = c.id WHERE o.template = :t '
            f"AND c.origin_message_id IN ({', '.join(':' + k for k in marks)})", t=f"{ACK_TEMPLATE}.txt.j2", **marks)
        return {str(r[0]).strip("<>") for r in rows}

    def poll(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self.lock:
                waiting = [m for m in self.appended if m not in self.acked]
            if waiting:
                seen_at = time.monotonic()
                found = self.acked_now(waiting)
                with self.lock:
                    for m in found:
                        self.acked.setdefault(m, seen_at)
            time.sleep(0.002)

    def run(self, first: int, backlog: int, samples: int) -> dict[str, Any]:
        progress(f"(e) latency under load: APPEND a {backlog}-message backlog, then a single message every "
                 f"{LOAD_INTERVAL} s while it is processed (at most {samples})")
        raws = [make_referral(i, self.run_id)[1] for i in range(first, first + backlog)]
        listener = IdleListener(self.dovecot)
        stop = threading.Event()
        poller = threading.Thread(target=self.poll, args=(stop,), name="ack-poller", daemon=True)
        try:
            with self.dovecot.client(timeout=30) as appender:
                exists = int(appender.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"])
                self.dovecot.append_many(raws, folder="INBOX")
                exists += backlog
                poller.start()
                rng = random.Random(11)
                for k in range(samples):
                    if k and self.db.counts()["done"] >= first + backlog:
                        break  # the backlog is done: what follows would be a quiet sample (the first always runs)
                    mid, raw = make_referral(first + backlog + k, self.run_id)
                    appender.append("INBOX", raw)
                    exists += 1
                    with self.lock:
                        self.appended[mid] = (time.monotonic(), exists)
                    time.sleep(LOAD_INTERVAL * rng.uniform(0.5, 1.5))
            self.wait_all_acked()
            events = self.announcements(listener, exists)
        finally:
            stop.set()
            listener.close()
        return self.figures(events, backlog)

    @staticmethod
    def announcements(listener: IdleListener, last: int) -> list[tuple[float, int]]:
        """Every EXISTS the listener saw, once it has seen ``last`` (it may come after the ack)."""
        events: list[tuple[float, int]] = []
        deadline = time.monotonic() + 30
        while not events or events[-1][1] < last:
            if time.monotonic() > deadline:
                raise Broken(f"load phase: Dovecot announced no EXISTS {last} to the IDLE listener")
            with contextlib.suppress(queue.Empty):
                events.append(listener.exists.get(timeout=0.2))
        return events

    def wait_all_acked(self) -> None:
        deadline = time.monotonic() + STALL_SECONDS * 5
        while True:
            with self.lock:
                left = len(self.appended) - len(self.acked)
            if not left:
                return
            if not self.child.alive():
                raise Broken(f"pipeline process exited with {self.child.proc.returncode}{self.child.log_tail()}")
            if time.monotonic() > deadline:
                raise Broken(f"load phase: {left} single messages not acknowledged within {STALL_SECONDS * 5:.0f} s"
                             f"{self.child.log_tail()}")
            time.sleep(0.05)

    def figures(self, events: list[tuple[float, int]], backlog: int) -> dict[str, Any]:
        pipeline_ms, notify_ms = [], []
        for mid, (at, count) in self.appended.items():
            announced = next((t for t, c in events if c >= count and t >= at - 1.0), None)
            if announced is None:
                raise Broken(f"load phase: Dovecot announced no EXISTS {count} to the IDLE listener")
            pipeline_ms.append((self.acked[mid] - at) * 1000)
            notify_ms.append((announced - at) * 1000)
        progress(f"(e) {len(pipeline_ms)} samples under load: p99 append->ack {percentile(pipeline_ms, 99):.0f} ms, "
                 f"append->EXISTS {percentile(notify_ms, 99):.0f} ms")
        return {**latency_figures(pipeline_ms, notify_ms), "backlog": backlog}


def service_mailbox(dovecot: DovecotServer, **overrides: Any) -> dict[str, Any]:
    """The service child's mailbox settings for this Dovecot (JSON, password included): production
    values, not the short test timeouts of mailbox_settings()."""
    mailbox = dovecot.mailbox_settings(
        name="bench", **{"poll_seconds": 30.0, "response_timeout_seconds": 30.0, "idle_renew_seconds": 25 * 60,
                         "reconnect_initial_seconds": 1.0, "reconnect_max_seconds": 300.0,
                         "fetch_batch": FETCH_BATCH, **overrides})
    cfg = mailbox.model_dump(mode="json")
    cfg["password"] = mailbox.password.get_secret_value() if mailbox.password else None
    return cfg


def dovecot_missing() -> int | None:
    """The exit code when Dovecot is not installed (2 under CI, where that is a failure; 0: skipped),
    with its one line printed; None when it is there."""
    from tests.servers import in_ci
    from tests.servers.dovecot import DOVECOT

    if os.path.exists(DOVECOT) and os.access(DOVECOT, os.X_OK):
        return None
    if in_ci():
        print(f"ERROR: {DOVECOT} not found and CI=true: apt-get install dovecot-imapd", file=sys.stderr)
        return 2
    print(f"SKIP: {DOVECOT} not found (apt-get install dovecot-imapd); benchmark not run")
    return 0


def run_pipeline(args: argparse.Namespace, dovecot: DovecotServer, relay: TimedRelay, tmp: Path,
                 database_url: str, run_id: str, expected_ids: Sequence[str], results: Results) -> None:
    n = args.n
    mailbox_cfg = service_mailbox(dovecot, after_store=args.after_store)
    profile_path = str(Path(args.profile).resolve()) if args.profile else None
    progress(f"(a) pipeline: App.run in a child process, catching up on {n} referrals in INBOX")
    relay_before = relay.count()
    child = Child("pipeline", {
        "data_dir": str(tmp / "var"), "config_dir": str(REPO / "config"), "database_url": database_url,
        "relay_port": relay.port, "mailbox": mailbox_cfg, "profile": profile_path,
    }, tmp / "pipeline.log")
    db: DbWatch | None = None
    try:
        started = child.expect("started", timeout=120)
        t0, cpu0 = float(started["t0"]), float(started["cpu_s"])
        db = DbWatch(database_url)
        caught = wait_catch_up(child, db, relay, n, t0)
        elapsed = caught.pop("nth_ack_at") - t0
        drained = wait_drained(db, relay, relay_before, timeout=max(60.0, n * 0.2))
        drained_s = time.monotonic() - t0
        child.send("rss")
        after = child.expect("rss", timeout=30)
        rss_catch_up, cpu = int(after["maxrss_kib"]), float(after["cpu_s"]) - cpu0
        worker_cpu = float(after["worker_cpu_s"]) - float(started["worker_cpu_s"])
        progress(f"(a) pipeline: {n} acknowledged in {elapsed:.2f} s = {n / elapsed:.1f} msgs/s; "
                 f"all {drained['outbox']} outgoing mails sent at {drained_s:.1f} s; "
                 f"{cpu * 1000 / n:.1f} ms CPU per referral ({worker_cpu * 1000 / n:.1f} of it in the parse worker)")
        results.pipeline = {"seconds": elapsed, "msgs_per_s": n / elapsed, **caught,
                            "outbox_drained_s": drained_s, "outgoing_mails": drained["outbox"],
                            "maxrss_kib_after_catch_up": rss_catch_up, "cpu_s": cpu,
                            "cpu_ms_per_referral": cpu * 1000 / n,
                            "worker_cpu_ms_per_referral": worker_cpu * 1000 / n,
                            "worker_rss_kib": int(after.get("worker_rss_kib", 0))}
        results.checks["after_catch_up"] = check_state(db, relay, relay_before, n, expected_ids, drained)
        results.database_size = database_size(database_url, n)
        if sqlite_path(database_url) is not None:
            mails = [(m.mail_from, m.rcpt_tos, m.raw) for m in relay.capture.messages[relay_before:]]
            results.snapshot_rows = snapshot_pipeline(sqlite_path(database_url), mails, tmp / "snapshot.pickle")
        latency_phases(args, dovecot, db, relay, relay_before, child, run_id, expected_ids, results)
        child.send("rss")
        idle = child.expect("rss", timeout=30)
        child.send("stop")
        result = child.expect("result", timeout=60)
        # max(): Linux syncs per-thread RSS counters lazily, so VmHWM read later may be a little lower
        results.pipeline["maxrss_kib"] = max(int(result["maxrss_kib"]), rss_catch_up)
        results.pipeline["ru_maxrss_kib"] = int(result["ru_maxrss_kib"])
        if not result.get("stopped"):
            raise Broken(f"the service did not stop within 30 s of being asked{child.log_tail()}")
        results.pipeline["idle_rss_kib_after_work"] = int(idle.get("rss_kib", 0))
    finally:
        if db is not None:
            db.dispose()
        child.close()
    if child.proc.returncode != 0:
        raise Broken(f"pipeline process exited with {child.proc.returncode}{child.log_tail()}")


def latency_phases(args: argparse.Namespace, dovecot: DovecotServer, db: DbWatch, relay: TimedRelay,
                   relay_before: int, child: Child, run_id: str, expected_ids: Sequence[str],
                   results: Results) -> None:
    """(d) quiet and (e) under-load latency, the service still running; then every check again."""
    n = total = args.n
    if args.latency_samples > 0:
        results.latency = run_latency(dovecot, db, relay, relay_before, child, run_id, n, args.latency_samples)
        total += args.latency_samples
    if args.load_backlog > 0 and args.load_samples > 0:
        load = LoadPhase(dovecot, db, relay, relay_before, child, run_id)
        results.latency_load = load.run(total, args.load_backlog, args.load_samples)
        total += args.load_backlog + results.latency_load["samples"]
    if total > n:
        final = wait_drained(db, relay, relay_before, timeout=max(60.0, (total - n) * 0.2))
        ids = [f"bench-{run_id}-{i}@bench.example.org" for i in range(n, total)]
        results.checks["final"] = check_state(db, relay, relay_before, total, [*expected_ids, *ids], final)


def sqlite_path(database_url: str) -> Path | None:
    from escalations.private import sqlite_path as path_of

    return path_of(database_url)


def database_size(database_url: str, cases: int) -> dict[str, Any]:
    """Bytes the database uses (pages in use, WAL included) per case, and the largest tables (dbstat)."""
    import sqlite3

    path = sqlite_path(database_url)
    if path is None or cases <= 0:
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        used = (int(db.execute("PRAGMA page_count").fetchone()[0])
                - int(db.execute("PRAGMA freelist_count").fetchone()[0])) * page_size
        tables: dict[str, int] = {}
        with contextlib.suppress(sqlite3.DatabaseError):  # dbstat is optional in SQLite builds
            tables = {str(name): int(size) for name, size in db.execute(
                "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 8")}
    return {"bytes": used, "cases": cases, "bytes_per_case": used / cases,
            "largest": {k: v / cases for k, v in tables.items()}}


def snapshot_pipeline(path: Path | None, mails: list[tuple[str, list[str], bytes]], out: Path) -> dict[str, int]:
    from equal_baseline import snapshot

    assert path is not None
    return snapshot(path, mails, out)


def run_equal(dovecot: DovecotServer, relay: TimedRelay, tmp: Path, n: int, results: Results) -> dict[str, Any]:
    """(c) the equal-work raw baseline on the same messages (folder Equal), after the pipeline."""
    rows = sum(results.snapshot_rows.values())
    mails = results.pipeline["outgoing_mails"]
    progress(f"(c) equal-work baseline: {n} messages, {rows} rows by executemany, {mails} mails on one connection")
    before = relay.count()
    child = Child("equal", {
        "host": dovecot.host, "port": dovecot.port, "user": dovecot.user, "password": dovecot.password,
        "folder": EQUAL_FOLDER, "relay_port": relay.port, "sqlite_path": str(tmp / "equal.sqlite3"),
        "batch": FETCH_BATCH, "n": n, "snapshot": str(tmp / "snapshot.pickle"),
    }, tmp / "equal.log")
    try:
        result = child.expect("result", timeout=max(120.0, n * 0.2))
    finally:
        child.close()
    if child.proc.returncode != 0:
        raise Broken(f"equal-work baseline exited with {child.proc.returncode}{child.log_tail()}")
    captured = relay.count() - before
    if not (result["fetched"] == n and result["rows"] == rows and result["sent"] == captured == mails):
        raise Broken(f"equal-work baseline did not do the same work: fetched {result['fetched']}/{n}, rows "
                     f"{result['rows']}/{rows}, mails sent {result['sent']}, captured {captured}, expected {mails}")
    elapsed = result["t1"] - result["t0"]
    progress(f"(c) equal-work baseline: {n} in {elapsed:.2f} s = {n / elapsed:.0f} msgs/s, "
             f"{result['cpu_s'] * 1000 / n:.2f} ms CPU per referral")
    return {"seconds": elapsed, "msgs_per_s": n / elapsed, "cpu_s": result["cpu_s"],
            "cpu_ms_per_referral": result["cpu_s"] * 1000 / n, "rows": rows, "rows_per_referral": rows / n,
            "statements": result["statements"], "mails": mails, "maxrss_kib": result["maxrss_kib"]}


def check_state(db: DbWatch, relay: TimedRelay, relay_before: int, n: int, expected_ids: Sequence[str],
                drained: dict[str, int]) -> dict[str, Any]:
    """Exactly one case and one acknowledgement per referral; every mail sent exactly once."""
    problems: list[str] = []
    c = drained
    if c["inbound"] != n:
        problems.append(f"{c['inbound']} inbound rows for {n} referrals")
    if c["done"] != n:
        problems.append(f"{c['done']}/{n} inbound rows done ({c['pending']} pending, {c['quarantined']} quarantined)")
    (cases, distinct_origins), = db.rows('SELECT count(*), count(DISTINCT origin_message_id) FROM "case"')
    if cases != n or distinct_origins != n:
        problems.append(f"{cases} cases ({distinct_origins} distinct referrals) for {n} referrals")
    origins = {str(r[0]).strip("<>") for r in db.rows('SELECT origin_message_id FROM "case"')}
    missing = [m for m in expected_ids if m not in origins]
    if missing:
        problems.append(f"{len(missing)} referrals have no case, e.g. {missing[:3]}")
    (acks, ack_cases, acks_sent), = db.rows(
        "SELECT count(*), count(DISTINCT case_id), coalesce(sum(CASE WHEN status = 'sent' THEN 1 ELSE 0 END), 0) "
        "FROM outbox WHERE template = :t", t=f"{ACK_TEMPLATE}.txt.j2")
    if acks != n or ack_cases != n or acks_sent != n:
        problems.append(f"{acks} acknowledgement rows ({ack_cases} cases, {acks_sent} sent) for {n} referrals")
    if c["outbox_failed"]:
        problems.append(f"{c['outbox_failed']} outbox rows failed")
    arrivals = relay.snapshot()[relay_before:]
    captured_acks = [a for a in arrivals if a.template == ACK_TEMPLATE]
    if len(captured_acks) != n or len({a.message_id for a in captured_acks}) != n:
        problems.append(f"relay captured {len(captured_acks)} acknowledgements "
                        f"({len({a.message_id for a in captured_acks})} distinct) for {n} referrals")
    if len(arrivals) != c["outbox_sent"] or len({a.message_id for a in arrivals}) != len(arrivals):
        problems.append(f"relay captured {len(arrivals)} messages ({len({a.message_id for a in arrivals})} "
                        f"distinct) for {c['outbox_sent']} sent outbox rows")
    if problems:
        raise Broken("; ".join(problems))
    return {"referrals": n, "cases": cases, "acks": acks, "outgoing": len(arrivals),
            "deferred": c.get("deferred", 0), "ok": True}


# ---- report ------------------------------------------------------------------------------------


def mib(kib: float) -> float:
    return kib / 1024.0


def run_peer_here(python: Path, tmp: Path, dovecot: DovecotServer, relay: TimedRelay,
                  raws: list[bytes]) -> dict[str, Any]:
    """django-helpdesk on the same referrals, in this run's Dovecot (a folder of its own: it deletes)."""
    from peer_helpdesk import PeerBroken, run_peer

    progress(f"(p) peer: django-helpdesk get_email on the same {len(raws)} referrals")
    try:
        return run_peer(python, tmp / "peer", dovecot, relay, raws, MAILBOX, "Peer").as_dict()
    except PeerBroken as exc:
        raise Broken(f"peer: {exc}") from exc


def evaluate(results: Results) -> None:
    p, b, lat = results.pipeline, results.baseline, results.latency
    ratio = p["msgs_per_s"] / b["msgs_per_s"]
    results.targets["throughput_ratio"] = {"value": ratio, "target": f">= {TARGET_RATIO}",
                                           "met": ratio >= TARGET_RATIO}
    rss = mib(p["maxrss_kib"])
    results.targets["peak_rss_mib"] = {"value": rss, "target": f"< {TARGET_RSS_MIB:.0f}", "met": rss < TARGET_RSS_MIB}
    for name, figures in (("p99_latency_over_server_ms", lat), ("p99_latency_over_server_under_load_ms",
                                                                  results.latency_load)):
        if figures:
            margin = figures["append_to_ack_queued_ms"]["p99"] - figures["append_to_exists_ms"]["p99"]
            results.targets[name] = {"value": margin, "target": f"<= {TARGET_LATENCY_MARGIN_MS:.0f}",
                                     "met": margin <= TARGET_LATENCY_MARGIN_MS}
    cpu = p["cpu_ms_per_referral"]
    results.targets["cpu_ms_per_referral"] = {"value": cpu, "target": f"<= {TARGET_CPU_MS:.0f}",
                                              "met": cpu <= TARGET_CPU_MS}
    if results.equal:
        eq = p["msgs_per_s"] / results.equal["msgs_per_s"]
        results.targets["equal_work_ratio"] = {"value": eq, "target": f">= {TARGET_EQUAL_RATIO}",
                                               "met": eq >= TARGET_EQUAL_RATIO}
    if results.database_size:
        per_case = results.database_size["bytes_per_case"]
        results.targets["bytes_per_case"] = {"value": per_case, "target": f"<= {TARGET_BYTES_PER_CASE}",
                                             "met": per_case <= TARGET_BYTES_PER_CASE}


def report(results: Results) -> str:
    p, b, lat, t = results.pipeline, results.baseline, results.latency, results.targets
    lines = [
        f"escalations ingest benchmark: N={results.n} City & Hackney referrals, database {results.database}, "
        f"Dovecot {results.dovecot_version} on loopback",
        f"  appended 3 x {results.n} messages in {results.append_seconds:.1f} s (setup, not measured)",
        "",
        f"(b) baseline   {b['msgs_per_s']:9.1f} msgs/s   {results.n} in {b['seconds']:.2f} s "
        f"(IMAPClient FETCH RFC822 x{FETCH_BATCH} + email parse + sqlite3 + 1 SMTP connection); "
        f"peak RSS {mib(b['maxrss_kib']):.1f} MiB",
        f"(a) pipeline   {p['msgs_per_s']:9.1f} msgs/s   {results.n} in {p['seconds']:.2f} s "
        f"(App.run start -> N-th referral_acknowledged captured by the relay)",
        f"      all stored at {_s(p.get('stored_all_s'))}, all processed at {_s(p.get('processed_all_s'))}, "
        f"first ack at {_s(p.get('first_ack_s'))}; all {p['outgoing_mails']} outgoing mails sent at "
        f"{p['outbox_drained_s']:.1f} s",
        f"    ratio pipeline/baseline {t['throughput_ratio']['value']:.3f}   (target >= {TARGET_RATIO}): "
        f"{verdict(t['throughput_ratio']['met'])}",
        f"    peak RSS of the service process {t['peak_rss_mib']['value']:.1f} MiB "
        f"(VmHWM; after catch-up {mib(p['maxrss_kib_after_catch_up']):.1f} MiB)   (target < {TARGET_RSS_MIB:.0f} MiB): "
        f"{verdict(t['peak_rss_mib']['met'])}; its parse worker {mib(p.get('worker_rss_kib', 0)):.1f} MiB more (VmRSS)",
    ]
    lines += cpu_lines(results)
    for key, title, figures in (("p99_latency_over_server_ms", "(d) IDLE latency, quiet", lat),
                                ("p99_latency_over_server_under_load_ms",
                                 f"(e) IDLE latency while a {results.latency_load.get('backlog', 0)}-message "
                                 "backlog is processed", results.latency_load)):
        if not figures:
            continue
        a, e, d = figures["append_to_ack_queued_ms"], figures["append_to_exists_ms"], figures["paired_difference_ms"]
        m = t[key]
        lines += [
            f"{title}, {figures['samples']} single messages (APPEND returned -> ...):",
            f"      ack queued (outbox row)      p50 {a['p50']:7.1f} ms   p99 {a['p99']:7.1f} ms   max {a['max']:7.1f} ms",
            f"      EXISTS to another IDLE client p50 {e['p50']:7.1f} ms   p99 {e['p99']:7.1f} ms   max {e['max']:7.1f} ms"
            "  (the server's own notification delay)",
            f"      per-message difference       p50 {d['p50']:7.1f} ms   p99 {d['p99']:7.1f} ms",
            f"    p99 ack - p99 EXISTS {m['value']:.1f} ms   (target <= {TARGET_LATENCY_MARGIN_MS:.0f} ms): "
            f"{verdict(m['met'])}",
        ]
    checks = results.checks.get("final") or results.checks.get("after_catch_up") or {}
    lines += ["", f"checks: {checks.get('cases')} cases, {checks.get('acks')} acknowledgements, "
                  f"{checks.get('outgoing')} outgoing mails each captured once ({checks.get('deferred')} deferred "
                  "to later by the outbox); no duplicates, nothing quarantined"]
    return "\n".join(lines)


def cpu_lines(results: Results) -> list[str]:
    """CPU per referral (getrusage of each child), the equal-work baseline, the database size."""
    p, b, eq, t = results.pipeline, results.baseline, results.equal, results.targets
    c = t["cpu_ms_per_referral"]
    lines = [f"    CPU per referral (getrusage + /proc of the service and its parse worker, catch-up until every "
             f"mail sent) {c['value']:.2f} ms, {p.get('worker_cpu_ms_per_referral', 0.0):.2f} ms of it in the worker   "
             f"(target <= {TARGET_CPU_MS:.0f} ms): {verdict(c['met'])}; bench baseline "
             f"{b['cpu_ms_per_referral']:.2f} ms"]
    if eq:
        r = t["equal_work_ratio"]
        lines += [
            f"(c) equal-work {eq['msgs_per_s']:9.1f} msgs/s   {results.n} in {eq['seconds']:.2f} s: the pipeline's "
            f"{eq['rows_per_referral']:.1f} rows per referral by sqlite3 executemany ({eq['statements']} statements) "
            f"and its {eq['mails']} mails on one SMTP connection; {eq['cpu_ms_per_referral']:.2f} ms CPU per referral",
            f"    ratio pipeline/equal-work {r['value']:.3f}   (target >= {TARGET_EQUAL_RATIO}): {verdict(r['met'])}; "
            f"CPU ratio {p['cpu_ms_per_referral'] / max(eq['cpu_ms_per_referral'], 1e-9):.1f}x",
        ]
    size = results.database_size
    if size:
        largest = ", ".join(f"{k} {v / 1024:.1f}" for k, v in list(size["largest"].items())[:5])
        lines.append(f"    database {size['bytes_per_case'] / 1024:.1f} KiB per case (pages in use / cases; "
                     f"target <= {TARGET_BYTES_PER_CASE // 1024} KiB: {verdict(t['bytes_per_case']['met'])})"
                     + (f"; KiB per case by table/index: {largest}" if largest else ""))
    return lines


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def print_profile(path: str, top: int = 15) -> None:
    """Per service thread: where its own time goes (tottime) and which of our functions cost most."""
    import glob
    import io
    import pstats

    for file in sorted(glob.glob(glob.escape(path) + ".*")):
        thread = file[len(path) + 1:]
        if not thread.startswith(("imap-", "processor", "outbox")):
            continue
        out = io.StringIO()
        stats = pstats.Stats(file, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(r"escalations/", top)
        body = re.sub(r"\n\s*\n+", "\n", out.getvalue())
        print(f"\n==== thread {thread} (cProfile; wall time, waits included) {file}\n{body}")


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000, help="referrals to catch up on (default 2000)")
    parser.add_argument("--latency-samples", type=int, default=200,
                        help="single messages for the IDLE latency figures (default 200; 0 skips)")
    parser.add_argument("--load-backlog", type=int, default=1000,
                        help="backlog APPENDed for the latency-under-load figures (default 1000; 0 skips)")
    parser.add_argument("--load-samples", type=int, default=100,
                        help="single messages timed while that backlog is processed (default at most 100)")
    parser.add_argument("--smoke", action="store_true",
                        help="CI mode: --n 50 --latency-samples 10 --load-backlog 30 --load-samples 5")
    parser.add_argument("--database-url", default=None,
                        help="service database (default: a temp SQLite file; a PostgreSQL URL gets a fresh schema)")
    parser.add_argument("--after-store", choices=("none", "seen"), default="none",
                        help="what the watcher does after storing (default none, as the baseline)")
    parser.add_argument("--peer", action="store_true",
                        help="also run django-helpdesk 2.6.1's get_email on the same backlog after ours, each round "
                             "(installs it once into ~/.cache/escalations-bench; see bench/peer_helpdesk.py)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="with --peer: rounds of (ours, peer), interleaved (default 2; latency in the first only)")
    parser.add_argument("--peer-cache", default=None, help="where the django-helpdesk venv is kept")
    parser.add_argument("--json", action="store_true", help="also print a JSON summary")
    parser.add_argument("--json-out", metavar="FILE", default=None, help="write the JSON summary to FILE")
    parser.add_argument("--profile", metavar="FILE.prof", default=None,
                        help="profile the service's threads with cProfile (slows it down) and print hot spots")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs, databases)")
    parser.add_argument("--child", choices=("pipeline", "baseline", "equal"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.latency_samples, args.load_backlog, args.load_samples = 50, 10, 30, 5
    if args.n < 1 or args.latency_samples < 0 or args.rounds < 1:
        parser.error("--n and --rounds must be >= 1 and --latency-samples >= 0")
    if args.smoke and args.peer:
        parser.error("--peer installs and runs django-helpdesk: not part of --smoke")
    return args


def dovecot_version(binary: str) -> str:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def run(args: argparse.Namespace, peer_python: Path | None = None) -> Results:
    from tests.servers.dovecot import DOVECOT, DovecotServer

    run_id = uuid.uuid4().hex[:8]
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="escalations-bench-"))
        if args.keep:
            progress(f"keeping {tmp}")
        else:
            stack.callback(shutil.rmtree, tmp, True)
        database_url = stack.enter_context(bench_database(args.database_url, tmp))
        results = Results(n=args.n, samples=args.latency_samples,
                          database="SQLite (temp file)" if not args.database_url else
                          database_url.split("@")[-1].split("?")[0],
                          dovecot_version=dovecot_version(DOVECOT))
        dovecot = DovecotServer()
        stack.callback(dovecot.cleanup)
        dovecot.start()
        relay = TimedRelay()
        relay.start()
        stack.callback(relay.stop)

        referrals = [make_referral(i, run_id) for i in range(args.n)]
        expected_ids = [mid for mid, _raw in referrals]
        raws = [raw for _mid, raw in referrals]
        progress(f"appending {args.n} referrals to INBOX and to {BASELINE_FOLDER}")
        t = time.monotonic()
        dovecot.append_many(raws, folder="INBOX")
        dovecot.append_many(raws, folder=BASELINE_FOLDER)
        dovecot.append_many(raws, folder=EQUAL_FOLDER)
        results.append_seconds = time.monotonic() - t
        if len(dovecot.uids("INBOX")) != args.n or len(dovecot.uids(BASELINE_FOLDER)) != args.n:
            raise Broken("APPEND did not leave N messages in each folder")
        del referrals

        results.baseline = run_baseline(dovecot, relay, tmp, args.n)
        run_pipeline(args, dovecot, relay, tmp, database_url, run_id, expected_ids, results)
        if results.snapshot_rows:
            results.equal = run_equal(dovecot, relay, tmp, args.n, results)
        if peer_python is not None:
            results.peer.append(run_peer_here(peer_python, tmp, dovecot, relay, raws))
        evaluate(results)
        return results
    raise AssertionError("unreachable")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        cfg = json.loads(sys.stdin.readline())
        if args.child == "equal":
            from equal_baseline import child_equal

            child_equal(cfg, emit, cpu_seconds, max_rss_kib)
            return 0
        child: Callable[[dict[str, Any]], None] = child_pipeline if args.child == "pipeline" else child_baseline
        child(cfg)
        return 0

    compile_like_installed()
    missing = dovecot_missing()
    if missing is not None:
        return missing
    started = time.monotonic()
    try:
        rounds = run_rounds(args)
    except Broken as exc:
        print(f"BROKEN: {exc}", file=sys.stderr)
        return 1
    print(report(rounds[0]))
    if args.peer:
        print(peer_report(rounds))
    if args.profile:
        print_profile(str(Path(args.profile).resolve()))
    print(f"\n(total wall time {time.monotonic() - started:.1f} s)")
    if args.json or args.json_out:
        blob = json.dumps([as_json(r) for r in rounds] if args.peer else as_json(rounds[0]), indent=2, default=str)
        if args.json:
            print(blob)
        if args.json_out:
            Path(args.json_out).write_text(blob + "\n", encoding="utf-8")
    return 0


def as_json(results: Results) -> dict[str, Any]:
    return {
        "n": results.n, "latency_samples": results.samples, "database": results.database,
        "dovecot": results.dovecot_version, "append_seconds": results.append_seconds,
        "baseline": results.baseline, "pipeline": results.pipeline, "latency": results.latency,
        "latency_load": results.latency_load, "equal": results.equal, "database_size": results.database_size,
        "snapshot_rows": results.snapshot_rows, "peer": results.peer,
        "targets": results.targets, "checks": results.checks,
    }


def run_rounds(args: argparse.Namespace) -> list[Results]:
    """One run; with --peer, ``--rounds`` runs of (ours, then the peer), latency in the first only."""
    if not args.peer:
        return [run(args)]
    from peer_helpdesk import PeerBroken, cache_root, ensure_venv

    try:
        python = ensure_venv(cache_root(args.peer_cache))
    except PeerBroken as exc:
        raise Broken(str(exc)) from exc
    out = []
    for r in range(args.rounds):
        progress(f"round {r + 1}/{args.rounds}: ours, then django-helpdesk, on the same {args.n} referrals")
        round_args = argparse.Namespace(**vars(args))
        if r:
            round_args.latency_samples = round_args.load_backlog = 0
        out.append(run(round_args, python))
    return out


def peer_report(rounds: list[Results]) -> str:
    lines = ["", f"ours vs django-helpdesk 2.6.1 get_email, {len(rounds)} interleaved rounds on the same referrals:"]
    for i, r in enumerate(rounds, 1):
        p, peer = r.pipeline, r.peer[0]
        lines.append(
            f"  round {i}: ours {p['msgs_per_s']:6.1f} msg/s {p['cpu_ms_per_referral']:6.2f} ms CPU/referral | "
            f"peer {peer['msgs_per_s']:6.1f} msg/s {peer['cpu_ms_per_msg']:6.2f} ms CPU/msg "
            f"({peer['gross_cpu_ms_per_msg']:.2f} with its start-up) | throughput ratio "
            f"{p['msgs_per_s'] / peer['msgs_per_s']:.2f}x (target >= {TARGET_PEER_RATIO:.0f}x), CPU ratio "
            f"{p['cpu_ms_per_referral'] / peer['cpu_ms_per_msg']:.2f}; peer peak RSS {peer['maxrss_kib'] / 1024:.0f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
