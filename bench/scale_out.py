#!/usr/bin/env python3
"""Scale-out on PostgreSQL: do two ``App.run`` processes on one database catch up faster than one?

    .venv/bin/python bench/scale_out.py                        # 5,000 referrals; 1 process, then 2; 1 round
    .venv/bin/python bench/scale_out.py --n 2000 --rounds 2    # (1, 2) twice, interleaved
    .venv/bin/python bench/scale_out.py --smoke                # CI: 40 referrals, correctness only

Each run gets a fresh PostgreSQL schema and a fresh Dovecot folder holding N City & Hackney
referrals (new Message-IDs every run). P service processes (``bench/ingest.py``'s pipeline child:
the real ``App.run`` with its IMAP watcher, processor, outbox and ticks, each with its own data
directory) start on that one database. A process that did not fetch a message is woken by the
fetching one's notification (LISTEN/NOTIFY, ``escalations/cases/wakeups.py``), not at its next poll
(``process_interval_seconds``, 5 s): with 40 referrals in ``--smoke``, both taking part shows it works. One of them holds the mailbox's watcher lease (an advisory
lock) and fetches; all of them claim inbound mail, outgoing mail and timers with
``FOR UPDATE SKIP LOCKED``. Measured: first process started -> N-th acknowledgement captured by the
relay, and every process's CPU (its own and its parse worker's). Checked, or the run is BROKEN:
one case per referral, one acknowledgement each, every outgoing mail captured exactly once, nothing
quarantined, and (with two) that both processes did part of the work.

Printed: msgs/s for one and for two processes, the ratio (target >= 1.6), CPU per referral.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import ingest  # noqa: E402  (bench/ on the path)

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_RATIO = 1.6


def progress(text: str) -> None:
    print(f"[scale-out {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far (/proc/stat): how saturated a run left it."""
    fields = [int(x) for x in Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def one_run(dovecot: Any, relay: ingest.TimedRelay, base_url: str, tmp: Path, n: int, processes: int,
            folder: str, poll: float | None) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    referrals = [ingest.make_referral(i, run_id) for i in range(n)]
    expected = [mid for mid, _raw in referrals]
    dovecot.append_many([raw for _mid, raw in referrals], folder=folder)
    del referrals
    mailbox_cfg = ingest.service_mailbox(dovecot, folder=folder, after_store="none")
    relay_before = relay.count()
    with ingest.bench_database(base_url, tmp) as url:
        progress(f"{processes} process(es) catching up on {n} referrals (schema {url.rsplit('%3D', 1)[-1]})")
        children = [ingest.Child("pipeline", {
            "data_dir": str(tmp / f"var-{run_id}-{i}"), "config_dir": str(REPO / "config"), "database_url": url,
            "relay_port": relay.port, "mailbox": mailbox_cfg, "profile": None, "process_interval_seconds": poll,
        }, tmp / f"pipeline-{run_id}-{i}.log") for i in range(processes)]
        db: ingest.DbWatch | None = None
        try:
            started = [c.expect("started", timeout=120) for c in children]
            t0 = min(float(s["t0"]) for s in started)
            busy0, total0 = machine_ticks()
            db = ingest.DbWatch(url)
            caught = ingest.wait_catch_up(children[0], db, relay, n, t0)
            elapsed = caught.pop("nth_ack_at") - t0
            busy1, total1 = machine_ticks()
            machine_busy = (busy1 - busy0) / max(1, total1 - total0)
            drained = ingest.wait_drained(db, relay, relay_before, timeout=max(60.0, n * 0.2))
            checks = ingest.check_state(db, relay, relay_before, n, expected, drained)
            cpu = 0.0
            for child, start in zip(children, started, strict=True):
                child.send("rss")
                cpu += float(child.expect("rss", timeout=30)["cpu_s"]) - float(start["cpu_s"])
            # who did the work: the processor of each process (its worker id is in claimed_by / the worker table)
            done_by = db.rows("SELECT count(DISTINCT claimed_by) FROM inbound_message WHERE claimed_by IS NOT NULL")
            workers = int(done_by[0][0]) if done_by else 0
            for child in children:
                child.send("stop")
            for child in children:
                result = child.expect("result", timeout=60)
                if not result.get("stopped"):
                    raise ingest.Broken(f"a service process did not stop within 30 s{child.log_tail()}")
        finally:
            if db is not None:
                db.dispose()
            for child in children:
                child.close()
        for child in children:
            if child.proc.returncode != 0:
                raise ingest.Broken(f"a service process exited with {child.proc.returncode}{child.log_tail()}")
    if processes > 1 and workers < processes:
        raise ingest.Broken(f"only {workers} of {processes} processes processed mail")
    progress(f"{processes} process(es): {n} acknowledged in {elapsed:.2f} s = {n / elapsed:.1f} msgs/s; "
             f"{cpu * 1000 / n:.1f} ms CPU per referral (all processes and their parse workers); "
             f"machine {machine_busy:.0%} busy")
    return {"processes": processes, "n": n, "seconds": elapsed, "msgs_per_s": n / elapsed, "machine_busy": machine_busy,
            "cpu_ms_per_referral": cpu * 1000 / n, "processing_workers": workers, "checks": checks}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="referrals per run (default 5000)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of (1 process, 2 processes) (default 1)")
    ap.add_argument("--database-url", default=DEFAULT_URL,
                    help=f"PostgreSQL server to make fresh schemas on (default {DEFAULT_URL})")
    ap.add_argument("--smoke", action="store_true", help="CI mode: --n 40, one round; correctness only")
    ap.add_argument("--json-out", metavar="FILE", help="write the figures as JSON to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory (the services' logs)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.rounds = 40, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:

    args = parse_args(argv)
    ingest.compile_like_installed()
    from tests.servers.dovecot import DovecotServer

    missing = ingest.dovecot_missing()
    if missing is not None:
        return missing
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="escalations-scale-"))
        if args.keep:
            progress(f"keeping {tmp}")
        else:
            stack.callback(shutil.rmtree, tmp, True)
        dovecot = DovecotServer()
        stack.callback(dovecot.cleanup)
        dovecot.start()
        try:
            for round_no in range(args.rounds):
                for processes in (1, 2):
                    relay = ingest.TimedRelay()  # its own per run: the waits count what it captured
                    relay.start()
                    try:
                        runs.append(one_run(dovecot, relay, args.database_url, tmp, args.n, processes,
                                            f"Scale{round_no}x{processes}", None))
                    finally:
                        relay.stop()
        except ingest.Broken as exc:
            print(f"BROKEN: {exc}", file=sys.stderr)
            return 1
    one = [r["msgs_per_s"] for r in runs if r["processes"] == 1]
    two = [r["msgs_per_s"] for r in runs if r["processes"] == 2]
    ratios = [b / a for a, b in zip(one, two, strict=True)]
    ratio = statistics.median(ratios)
    print(f"escalations scale-out on PostgreSQL: N={args.n} City & Hackney referrals, {args.rounds} round(s), "
          "runs interleaved")
    for r in runs:
        print(f"  {r['processes']} process{'es' if r['processes'] > 1 else ''}: {r['msgs_per_s']:7.1f} msgs/s "
              f"({r['n']} in {r['seconds']:.2f} s), {r['cpu_ms_per_referral']:.1f} ms CPU per referral, "
              f"{r['processing_workers']} processing worker(s), the machine {r['machine_busy']:.0%} busy "
              "(all its CPUs: PostgreSQL, Dovecot, the relay and the services share them); "
              f"{r['checks']['cases']} cases, "
              f"{r['checks']['acks']} acknowledgements, {r['checks']['outgoing']} mails each captured once")
    verdict = "target met" if ratio >= TARGET_RATIO else "target missed"
    print(f"  2 processes / 1 process: {', '.join(f'{x:.2f}' for x in ratios)} (median {ratio:.2f}; "
          f"target >= {TARGET_RATIO}): {verdict}" + ("  [smoke: too small to mean anything]" if args.smoke else ""))
    print(f"  no duplicates: every run had one case and one acknowledgement per referral\n"
          f"(total wall time {time.monotonic() - started:.1f} s)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"runs": runs, "ratios": ratios, "ratio": ratio,
                                                   "target": TARGET_RATIO}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
