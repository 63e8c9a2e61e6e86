#!/usr/bin/env python3
"""The peer: django-helpdesk 2.6.1's ``get_email`` on a Dovecot backlog, timed like ours.

    .venv/bin/python bench/peer_helpdesk.py --n 500       # its own Dovecot and relay, N referrals
    (bench/ingest.py --peer runs it interleaved with ours, on the same referrals)

What it does, all on loopback:

1. Makes (once, then reuses) a virtualenv with ``django-helpdesk==2.6.1`` from PyPI under
   ``~/.cache/escalations-bench/helpdesk-2.6.1`` (``--cache-dir`` or ``ESCALATIONS_BENCH_CACHE``); the
   package's code is never copied into this repository.
2. Writes a minimal Django project into the bench's temp dir: SQLite database, the SMTP email
   backend pointed at the capturing relay, helpdesk's own defaults otherwise (teams mode off: it
   needs the optional pinax-teams). ``migrate`` creates the tables and loads helpdesk's email
   templates; one Queue reads the Dovecot folder over plain IMAP (``email_box_type=imap``, port,
   user, password) - setup, not measured.
3. Runs ``manage.py get_email --quiet`` once on an empty folder (the start-up cost of a cron run),
   then once on the backlog, each a child process: wall time, and CPU from ``getrusage(RUSAGE_CHILDREN)``
   (user + system) of that child alone.
4. Checks that every message became a ticket and the relay captured one acknowledgement
   (``newticket_submitter``) per ticket.

Figures: msg/s = N / wall time of the backlog run; CPU per message = (CPU of the backlog run - CPU
of the empty run) / N, and the gross figure with start-up included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from tests.servers.dovecot import DovecotServer

HELPDESK_VERSION = "2.6.1"
PEER_TEMPLATE_HINT = b"New ticket"  # newticket_submitter's subject begins "(Opened)"/"New ticket" by locale


class PeerBroken(Exception):
    """The peer harness could not run django-helpdesk, or it did not handle the backlog."""


def progress(text: str) -> None:
    print(f"[peer {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def cache_root(explicit: str | None = None) -> Path:
    base = explicit or os.environ.get("ESCALATIONS_BENCH_CACHE") or str(Path.home() / ".cache" / "escalations-bench")
    return Path(base)


def ensure_venv(root: Path) -> Path:
    """The python of a virtualenv holding django-helpdesk (made once; reused while its marker exists)."""
    venv = root / f"helpdesk-{HELPDESK_VERSION}"
    python = venv / "bin" / "python"
    marker = venv / ".complete"
    if marker.exists() and python.exists():
        return python
    progress(f"installing django-helpdesk=={HELPDESK_VERSION} into {venv} (once; cached for later runs)")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".helpdesk-{HELPDESK_VERSION}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True)
        subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q",
                        f"django-helpdesk=={HELPDESK_VERSION}"], check=True)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PeerBroken(f"could not install django-helpdesk {HELPDESK_VERSION}: {exc}") from exc
    shutil.rmtree(venv, ignore_errors=True)
    tmp.rename(venv)  # only `python -m ...` is used: a moved venv's script shebangs do not matter
    marker.write_text(HELPDESK_VERSION + "\n")
    return python


SETTINGS = """\
from pathlib import Path
BASE = Path(__file__).resolve().parent
SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
USE_TZ = True
TIME_ZONE = "Europe/London"
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles",
    "django.contrib.sites", "django.contrib.humanize", "rest_framework", "helpdesk",
]
SITE_ID = 1
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware",
              "django.contrib.auth.middleware.AuthenticationMiddleware",
              "django.contrib.messages.middleware.MessageMiddleware"]
ROOT_URLCONF = "benchsite.urls"
TEMPLATES = [{{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [], "APP_DIRS": True,
              "OPTIONS": {{"context_processors": ["django.template.context_processors.request",
                                                 "django.contrib.auth.context_processors.auth",
                                                 "django.contrib.messages.context_processors.messages"]}}}}]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": str(BASE / "helpdesk.sqlite3")}}}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
STATIC_URL = "/static/"
MEDIA_ROOT = str(BASE / "media")
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = {relay_port}
DEFAULT_FROM_EMAIL = "{mailbox}"
SERVER_EMAIL = "{mailbox}"
HELPDESK_TEAMS_MODE_ENABLED = False
HELPDESK_DEFAULT_SETTINGS = {{"use_email_as_submitter": True, "email_on_ticket_assign": False,
                             "email_on_ticket_change": False, "login_view_ticketlist": True,
                             "tickets_per_page": 25}}
LOGGING = {{"version": 1, "disable_existing_loggers": False,
           "root": {{"level": "WARNING", "handlers": []}}}}
"""

URLS = """\
from django.urls import include, path
urlpatterns = [path("helpdesk/", include("helpdesk.urls", namespace="helpdesk"))]
"""

MAKE_QUEUE = """\
from helpdesk.models import Queue
Queue.objects.create(
    title="CHSCP", slug="chscp", email_address={mailbox!r}, allow_email_submission=True,
    email_box_type="imap", email_box_host="127.0.0.1", email_box_port={port}, email_box_ssl=False,
    email_box_user={user!r}, email_box_pass={password!r}, email_box_imap_folder={folder!r},
    email_box_interval=0, logging_type="none",
)
"""


@dataclass(frozen=True)
class PeerRun:
    n: int
    seconds: float
    cpu_s: float
    startup_cpu_s: float
    startup_seconds: float
    tickets: int
    acks: int
    maxrss_kib: int

    @property
    def msgs_per_s(self) -> float:
        return self.n / self.seconds

    @property
    def cpu_ms_per_msg(self) -> float:
        return (self.cpu_s - self.startup_cpu_s) * 1000 / self.n

    @property
    def gross_cpu_ms_per_msg(self) -> float:
        return self.cpu_s * 1000 / self.n

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "msgs_per_s": self.msgs_per_s, "cpu_ms_per_msg": self.cpu_ms_per_msg,
                "gross_cpu_ms_per_msg": self.gross_cpu_ms_per_msg}


class HelpdeskSite:
    """A Django project with django-helpdesk, in ``workdir``, reading ``folder`` of ``dovecot``."""

    def __init__(self, python: Path, workdir: Path, dovecot: DovecotServer, folder: str, relay_port: int,
                 mailbox: str) -> None:
        self.python, self.workdir = python, workdir
        site = workdir / "benchsite"
        site.mkdir(parents=True)
        (site / "__init__.py").write_text("")
        (site / "settings.py").write_text(SETTINGS.format(relay_port=relay_port, mailbox=mailbox))
        (site / "urls.py").write_text(URLS)
        (workdir / "manage.py").write_text(textwrap.dedent("""\
            import atexit, os, sys

            def _peak_rss():  # VmHWM: this address space's own high-water mark (ru_maxrss is not, after exec)
                with open("/proc/self/status") as f, open(os.environ["BENCH_HWM_FILE"], "w") as out:
                    out.write(next((l.split()[1] for l in f if l.startswith("VmHWM:")), "0"))

            if os.environ.get("BENCH_HWM_FILE") and os.path.exists("/proc/self/status"):
                atexit.register(_peak_rss)
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")
            from django.core.management import execute_from_command_line
            execute_from_command_line(sys.argv)
        """))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("ESCALATIONS_", "DJANGO_"))}
        self.env["PYTHONDONTWRITEBYTECODE"] = "1"
        self.manage("migrate", "--noinput", "-v", "0")
        self.manage("shell", "-c", MAKE_QUEUE.format(mailbox=mailbox, port=dovecot.port, user=dovecot.user,
                                                     password=dovecot.password, folder=folder))

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.python), "manage.py", *args], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise PeerBroken(f"manage.py {args[0]} exited with {done.returncode}: {done.stderr[-2000:]}")
        return done

    def timed_get_email(self) -> tuple[float, float, int]:
        """(wall seconds, CPU seconds, peak RSS KiB) of one ``get_email`` child, from its own rusage."""
        log, hwm = self.workdir / "get_email.log", self.workdir / "get_email.hwm"
        hwm.unlink(missing_ok=True)
        with open(log, "wb") as out:
            t0 = time.monotonic()
            proc = subprocess.Popen([str(self.python), "manage.py", "get_email", "--quiet"], cwd=self.workdir,
                                    env={**self.env, "BENCH_HWM_FILE": str(hwm)}, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out)
            _pid, status, usage = os.wait4(proc.pid, 0)  # this child's rusage alone
            wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise PeerBroken(f"get_email exited with {proc.returncode}: {tail}")
        peak = int(hwm.read_text().strip() or 0) if hwm.exists() else int(usage.ru_maxrss)
        return wall, usage.ru_utime + usage.ru_stime, peak

    def tickets(self) -> int:
        with contextlib.closing(sqlite3.connect(self.workdir / "benchsite" / "helpdesk.sqlite3")) as db:
            return int(db.execute("SELECT count(*) FROM helpdesk_ticket").fetchone()[0])


def run_peer(python: Path, workdir: Path, dovecot: DovecotServer, relay: Any, raws: list[bytes],
             mailbox: str, folder: str) -> PeerRun:
    """One measured ``get_email`` over ``raws`` APPENDed to ``folder`` (a fresh folder per run:
    django-helpdesk deletes what it has turned into tickets)."""
    site = HelpdeskSite(python, workdir, dovecot, folder, relay.port, mailbox)
    dovecot.create_folder(folder)
    startup_wall, startup_cpu, _ = site.timed_get_email()  # empty folder: a cron run's fixed cost
    dovecot.append_many(raws, folder=folder)
    acks_before = relay.count()
    progress(f"get_email on {len(raws)} messages in {folder}")
    wall, cpu, rss = site.timed_get_email()
    tickets, acks = site.tickets(), relay.count() - acks_before
    n = len(raws)
    if tickets != n or acks != n:
        raise PeerBroken(f"django-helpdesk made {tickets} tickets and sent {acks} acknowledgements for {n} messages")
    run = PeerRun(n=n, seconds=wall, cpu_s=cpu, startup_cpu_s=startup_cpu, startup_seconds=startup_wall,
                  tickets=tickets, acks=acks, maxrss_kib=rss)
    progress(f"django-helpdesk: {n} in {wall:.2f} s = {run.msgs_per_s:.1f} msg/s, "
             f"{run.cpu_ms_per_msg:.1f} ms CPU per message (net of {startup_cpu * 1000:.0f} ms start-up)")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=500, help="referrals in the backlog (default 500)")
    parser.add_argument("--cache-dir", default=None, help="where the django-helpdesk venv is kept")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import ingest  # bench/ingest.py: the same referrals and relay as our own benchmark

    from tests.servers.dovecot import DovecotServer

    python = ensure_venv(cache_root(args.cache_dir))
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="escalations-peer-"))
        stack.callback(shutil.rmtree, tmp, True)
        dovecot = DovecotServer()
        stack.callback(dovecot.cleanup)
        dovecot.start()
        relay = ingest.TimedRelay()
        relay.start()
        stack.callback(relay.stop)
        raws = [raw for _mid, raw in (ingest.make_referral(i, "peer") for i in range(args.n))]
        try:
            run = run_peer(python, tmp / "site", dovecot, relay, raws, ingest.MAILBOX, "Peer")
        except PeerBroken as exc:
            print(f"BROKEN: {exc}", file=sys.stderr)
            return 1
    print(f"django-helpdesk {HELPDESK_VERSION} get_email: {run.msgs_per_s:.1f} msg/s, "
          f"{run.cpu_ms_per_msg:.1f} ms CPU per message ({run.gross_cpu_ms_per_msg:.1f} ms with start-up), "
          f"peak RSS {run.maxrss_kib / 1024:.0f} MiB")
    if args.json:
        print(json.dumps(run.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
