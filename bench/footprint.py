#!/usr/bin/env python3
"""Footprint: memory of ``escalations run``, database bytes per case, start-up of ``escalations cases list``.

    .venv/bin/python bench/footprint.py                   # catch-up of 5,000 referrals, 15 start-up pairs
    .venv/bin/python bench/footprint.py --catchup 500 --repeats 9 --json-out footprint.json
    .venv/bin/python bench/footprint.py --smoke           # 30 referrals, 3 pairs
    .venv/bin/python bench/footprint.py --startup-only    # only the start-up comparison

1. Memory: the real command ``escalations run`` (a child process; settings by environment and a
   mailboxes file) against an unprivileged Dovecot and a capturing relay on loopback. One warm-up
   referral is acknowledged first (every lazy import done); then its VmRSS is sampled for a few
   seconds: idle RSS (median). Then N referrals are APPENDed and VmRSS sampled until the N-th
   acknowledgement is captured: peak = VmHWM (the process's own high-water mark); VmHWM before
   the catch-up is printed beside it (a peak made while starting, not by the catch-up). The first
   start is on a new database, so it runs the migrations (Alembic stays imported); the service is
   then stopped and started again on the same database, and after one more referral its idle RSS
   is sampled again: what a restart of a running installation holds.
2. Database: pages in use / cases after the catch-up (SQLite), and the largest tables.
3. Start-up: ``escalations cases list`` on an empty database (``db upgrade`` first) and
   ``python -c "import sqlite3, email"`` (the same interpreter), alternated ``--repeats`` times in
   this run; medians and their ratio. ``cases list`` is timed both with the validated-config cache
   warm (the usual case) and with the cache removed before each run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import ingest  # noqa: E402  (bench/ingest.py: referrals, relay, database size)

TARGET_IDLE_MIB = 60.0
TARGET_PEAK_MIB = 100.0
TARGET_STARTUP_RATIO = 3.0


def progress(text: str) -> None:
    print(f"[footprint {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def escalations_command() -> list[str]:
    script = Path(sys.executable).parent / "escalations"
    return [str(script)] if script.exists() else [sys.executable, "-m", "escalations"]


def proc_status(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure in KiB (VmRSS, VmHWM); 0 once the process is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def service_env(tmp: Path, dovecot: Any, relay_port: int) -> dict[str, str]:
    """Settings for ``escalations run`` by environment, the mailbox in a private YAML file."""
    import yaml

    mailbox = dovecot.mailbox_settings(
        name="bench", poll_seconds=30.0, response_timeout_seconds=30.0, idle_renew_seconds=25 * 60,
        reconnect_initial_seconds=1.0, reconnect_max_seconds=300.0, fetch_batch=ingest.FETCH_BATCH)
    cfg = mailbox.model_dump(mode="json")
    cfg["password"] = mailbox.password.get_secret_value()
    mailboxes = tmp / "mailboxes.yaml"
    fd = os.open(mailboxes, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump({"mailboxes": [cfg]}, f)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCALATIONS_")}
    env.update({
        "ESCALATIONS_DATA_DIR": str(tmp / "var"), "ESCALATIONS_CONFIG": str(REPO / "config"),
        "ESCALATIONS_MAILBOXES_FILE": str(mailboxes), "ESCALATIONS_SMTP_LISTEN_PORT": "0",
        "ESCALATIONS_RELAY__HOST": "127.0.0.1", "ESCALATIONS_RELAY__PORT": str(relay_port),
        "ESCALATIONS_RELAY__SECURITY": "none",
        "ESCALATIONS_WEB__BIND": "127.0.0.1:0",  # the web interface on, on a free port (8080 may be taken)
    })
    return env


def wait_acks(proc: subprocess.Popen[bytes], relay: Any, goal: int, samples: list[int], log: Path) -> None:
    """Until the relay holds ``goal`` acknowledgements; VmRSS sampled meanwhile; stall = broken."""
    last, last_change = -1, time.monotonic()
    while (count := relay.count(ingest.ACK_TEMPLATE)) < goal:
        if proc.poll() is not None:
            raise SystemExit(f"BROKEN: escalations run exited with {proc.returncode}:\n{tail(log)}")
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > ingest.STALL_SECONDS:
            raise SystemExit(f"BROKEN: stalled at {count}/{goal} acknowledgements:\n{tail(log)}")
        samples.append(proc_status(proc.pid, "VmRSS"))
        time.sleep(0.2)


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def memory(n: int, idle_seconds: float) -> dict[str, Any]:
    from tests.servers.dovecot import DovecotServer

    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="escalations-footprint-"))
        stack.callback(shutil.rmtree, tmp, True)
        dovecot = DovecotServer()
        stack.callback(dovecot.cleanup)
        dovecot.start()
        relay = ingest.TimedRelay()
        relay.start()
        stack.callback(relay.stop)
        log = tmp / "run.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([*escalations_command(), "run"], env=service_env(tmp, dovecot, relay.port),
                                    cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        stack.callback(stop_service, proc)
        dovecot.append(ingest.make_referral(0, "footprint")[1])
        idle = idle_after_one(proc, relay, 1, log, idle_seconds)
        hwm_before = proc_status(proc.pid, "VmHWM")
        progress(f"escalations run idle: {statistics.median(idle) / 1024:.1f} MiB; appending {n} referrals")
        during: list[int] = []
        t = time.monotonic()
        dovecot.append_many([ingest.make_referral(i, "footprint")[1] for i in range(1, n + 1)])
        wait_acks(proc, relay, n + 1, during, log)
        elapsed = time.monotonic() - t
        peak = proc_status(proc.pid, "VmHWM")
        db_url = f"sqlite:///{tmp / 'var' / 'escalations.sqlite3'}"
        size = ingest.database_size(db_url, n + 1)
        progress(f"catch-up of {n}: {elapsed:.1f} s, peak {peak / 1024:.1f} MiB; restarting")
        stop_service(proc)
        with open(log, "ab") as out:
            proc = subprocess.Popen([*escalations_command(), "run"], env=service_env(tmp, dovecot, relay.port),
                                    cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        stack.callback(stop_service, proc)
        dovecot.append(ingest.make_referral(n + 1, "footprint")[1])
        restart_idle = idle_after_one(proc, relay, n + 2, log, idle_seconds)
        progress(f"escalations run idle after a restart: {statistics.median(restart_idle) / 1024:.1f} MiB")
    return {"catchup": n, "idle_rss_kib": statistics.median(idle), "idle_samples": len(idle),
            "hwm_before_catchup_kib": hwm_before, "peak_rss_kib": peak,
            "max_sampled_rss_kib": max(during or [0]), "catchup_seconds": elapsed, "database": size,
            "restart_idle_rss_kib": statistics.median(restart_idle)}


def idle_after_one(proc: subprocess.Popen[bytes], relay: Any, goal: int, log: Path, seconds: float) -> list[int]:
    """VmRSS samples for ``seconds``, once the ``goal``-th acknowledgement is captured (lazy imports done)."""
    wait_acks(proc, relay, goal, [], log)
    time.sleep(1.0)
    idle = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        idle.append(proc_status(proc.pid, "VmRSS"))
        time.sleep(0.25)
    return idle


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # our own child, by its handle
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, timeout=120)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"BROKEN: {' '.join(cmd)} exited with {done.returncode}: {done.stderr.decode()[-800:]}")
    return elapsed


def startup(repeats: int) -> dict[str, Any]:
    """`escalations cases list` on an empty database vs `python -c "import sqlite3, email"`, alternated."""
    with tempfile.TemporaryDirectory(prefix="escalations-startup-") as d:
        tmp = Path(d)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESCALATIONS_")}
        env.update({"ESCALATIONS_DATA_DIR": str(tmp / "var"), "ESCALATIONS_CONFIG": str(REPO / "config"),
                    "COLUMNS": "120"})
        cli = escalations_command()
        timed([*cli, "db", "upgrade"], env, tmp)
        cache = tmp / "var" / "config-cache.pickle"
        bare, warm, cold = [], [], []
        timed([*cli, "cases", "list"], env, tmp)  # fills the config cache (and the OS page cache)
        for _ in range(repeats):
            bare.append(timed([sys.executable, "-c", "import sqlite3, email"], env, tmp))
            warm.append(timed([*cli, "cases", "list"], env, tmp))
            cache.unlink(missing_ok=True)
            cold.append(timed([*cli, "cases", "list"], env, tmp))
    b, w, c = statistics.median(bare), statistics.median(warm), statistics.median(cold)
    return {"repeats": repeats, "python_import_s": b, "cases_list_s": w, "cases_list_no_cache_s": c,
            "ratio": w / b, "ratio_no_cache": c / b}


def report(out: dict[str, Any]) -> str:
    lines = ["footprint:"]
    m = out.get("memory")
    if m:
        idle, peak = m["idle_rss_kib"] / 1024, m["peak_rss_kib"] / 1024
        lines += [
            f"  escalations run idle RSS {idle:6.1f} MiB (median of {m['idle_samples']} samples after one referral; "
            f"target <= {TARGET_IDLE_MIB:.0f}: {ingest.verdict(idle <= TARGET_IDLE_MIB)})",
            f"  peak RSS during a {m['catchup']}-referral catch-up {peak:6.1f} MiB (VmHWM; {m['catchup_seconds']:.1f} s; "
            f"target <= {TARGET_PEAK_MIB:.0f}: {ingest.verdict(peak <= TARGET_PEAK_MIB)}); "
            f"VmHWM before it {m['hwm_before_catchup_kib'] / 1024:.1f} MiB",
        ]
        if "restart_idle_rss_kib" in m:
            restart = m["restart_idle_rss_kib"] / 1024
            lines.append(f"  escalations run idle RSS after a restart on that database {restart:6.1f} MiB (no migrations "
                         f"to run; target <= {TARGET_IDLE_MIB:.0f}: {ingest.verdict(restart <= TARGET_IDLE_MIB)})")
        size = m["database"]
        if size:
            largest = ", ".join(f"{k} {v / 1024:.1f}" for k, v in list(size["largest"].items())[:5])
            lines.append(f"  database {size['bytes_per_case'] / 1024:.1f} KiB per case over {size['cases']} cases "
                         f"(target <= 8 KiB: {ingest.verdict(size['bytes_per_case'] <= 8192)}); by table/index {largest}")
    s = out.get("startup")
    if s:
        lines += [
            f"  escalations cases list, empty database: {s['cases_list_s'] * 1000:.0f} ms with the config cache, "
            f"{s['cases_list_no_cache_s'] * 1000:.0f} ms without; python -c 'import sqlite3, email' "
            f"{s['python_import_s'] * 1000:.0f} ms (medians of {s['repeats']}, alternated)",
            f"    ratio {s['ratio']:.1f}x (no cache {s['ratio_no_cache']:.1f}x)   (target <= {TARGET_STARTUP_RATIO:.0f}x): "
            f"{ingest.verdict(s['ratio'] <= TARGET_STARTUP_RATIO)}",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--catchup", type=int, default=5000, help="referrals in the catch-up (default 5000)")
    parser.add_argument("--repeats", type=int, default=15, help="start-up pairs (default 15; medians)")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--startup-only", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="30 referrals, 3 pairs, 2 s idle")
    parser.add_argument("--json-out", metavar="FILE", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.catchup, args.repeats, args.idle_seconds = 30, 3, 2.0
    ingest.compile_like_installed()
    out: dict[str, Any] = {}
    if not args.startup_only:
        from tests.servers.dovecot import DOVECOT

        if os.path.exists(DOVECOT):
            out["memory"] = memory(args.catchup, args.idle_seconds)
        else:
            print(f"SKIP memory: {DOVECOT} not found (apt-get install dovecot-imapd)")
    out["startup"] = startup(args.repeats)
    print(report(out))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
