#!/usr/bin/env python3
"""The whole performance table in one command: figure | ours | peer | baseline | ratio.

    .venv/bin/python bench/report.py                  # ingest N=2000, tick 100,000 cases, footprint 5,000
    .venv/bin/python bench/report.py --peer           # + django-helpdesk 2.6.1, rounds interleaved with ours
    .venv/bin/python bench/report.py --smoke          # every piece CI-sized (about a minute; no peer)
    .venv/bin/python bench/report.py --n 1000 --cases 20000 --catchup 2000 --json-out figures.json

Runs, in sequence, each as its own process (their progress goes to stderr):
bench/ingest.py (throughput, CPU per referral, baselines, IDLE latency quiet and under load, and with
--peer the interleaved peer rounds), bench/tick.py, bench/footprint.py; then prints the table. A
figure's targets are those of the performance issue; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def run_piece(script: str, args: list[str], out: Path) -> Any:
    cmd = [sys.executable, str(BENCH / script), *args, "--json-out", str(out)]
    print(f"[report] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t = time.monotonic()
    done = subprocess.run(cmd, stdout=sys.stderr, check=False)
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"BROKEN: {script} exited with {done.returncode}")
    print(f"[report] {script}: {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    return json.loads(out.read_text(encoding="utf-8"))


def f(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def spread(values: list[float], unit: str = "", digits: int = 1) -> str:
    """One figure, or the range over interleaved rounds."""
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f(lo, unit, digits) if len(values) == 1 or f(lo, "", digits) == f(hi, "", digits) \
        else f"{lo:.{digits}f}–{hi:.{digits}f}{unit}"


def margin(lat: dict[str, Any]) -> float | None:
    if not lat:
        return None
    return float(lat["append_to_ack_queued_ms"]["p99"] - lat["append_to_exists_ms"]["p99"])


def ingest_rows(rounds: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    first = rounds[0]
    p = [r["pipeline"] for r in rounds]
    peers = [r["peer"][0] for r in rounds if r.get("peer")]
    cpu = [x["cpu_ms_per_referral"] for x in p]
    tput = [x["msgs_per_s"] for x in p]
    eq = first.get("equal") or {}
    rows = [
        ("CPU per referral (getrusage; ack + stage mail + events + timers)", spread(cpu, " ms", 2),
         spread([x["cpu_ms_per_msg"] for x in peers], " ms", 2),
         f"{f(eq.get('cpu_ms_per_referral'), ' ms', 2)} equal-work; "
         f"{f(first['baseline'].get('cpu_ms_per_referral'), ' ms', 2)} bench",
         f"{spread([c / x['cpu_ms_per_msg'] for c, x in zip(cpu, peers, strict=False)], 'x', 2)} of peer; "
         f"target <= 6 ms"),
        ("throughput, adjacent runs (msg/s)", spread(tput), spread([x["msgs_per_s"] for x in peers]),
         f"{f(eq.get('msgs_per_s'))} equal-work; {f(first['baseline']['msgs_per_s'])} bench",
         f"{spread([t / x['msgs_per_s'] for t, x in zip(tput, peers, strict=False)], 'x', 2)} of peer; "
         "target >= 3x"),
        ("pipeline / equal-work baseline", spread([t / r["equal"]["msgs_per_s"] for t, r in zip(tput, rounds, strict=True)
                                                   if r.get("equal")], "", 3), "", "", "target >= 0.5"),
        ("pipeline / bench baseline", spread([t / r["baseline"]["msgs_per_s"] for t, r in zip(tput, rounds, strict=True)],
                                             "", 3), "", "", "target >= 0.7 (old)"),
        ("IDLE append -> ack queued, p99 minus Dovecot's p99, quiet", f(margin(first.get("latency")), " ms"),
         "polls from cron", "", "target <= 50 ms"),
        (f"  ... while a {(first.get('latency_load') or {}).get('backlog', 0)}-message backlog is processed",
         f(margin(first.get("latency_load")), " ms")
         + (f" ({first['latency_load']['samples']} samples)" if first.get("latency_load") else ""),
         "", "", "target <= 50 ms"),
        ("peak RSS, ingest run (service child, VmHWM)", f(p[0]["maxrss_kib"] / 1024, " MiB"),
         spread([x["maxrss_kib"] / 1024 for x in peers], " MiB"), f(first["baseline"]["maxrss_kib"] / 1024, " MiB"),
         ""),
    ]
    size = first.get("database_size") or {}
    if size:
        rows.append(("database per case (ingest run)", f(size["bytes_per_case"] / 1024, " KiB"), "", "",
                     "target <= 8 KiB"))
    return rows


def tick_rows(tick: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    sizes = tick["sizes"]
    res = {int(k): v for k, v in tick["results"].items()}
    v = tick["verdicts"]
    idle = " / ".join(f"{res[s]['idle_ms']:.1f}" for s in sizes)
    d_max = max(int(d) for d in res[sizes[-1]]["fire"])
    per = " / ".join(f"{res[s]['fire'][str(d_max)]['ms_per_timer']:.1f}" for s in sizes)
    return [
        (f"tick with nothing due at {' / '.join(str(s) for s in sizes)} open cases", f"{idle} ms", "", "",
         f"x{v['idle_ratio']:.1f} for N x{v['n_ratio']:.0f}: "
         f"{'O(open cases)' if v['idle_grows_with_n'] else 'flat'}; target <= 5 ms at 100k"),
        (f"tick firing D={d_max} timers, per timer, same sizes", f"{per} ms", "", "",
         f"x{v['per_timer_ratio']:.2f}: {'grows with N' if v['per_timer_grows_with_n'] else 'O(D)'}"),
    ]


def footprint_rows(fp: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    m = fp.get("memory")
    if m:
        rows += [
            ("escalations run idle RSS", f(m["idle_rss_kib"] / 1024, " MiB"), "", "", "target <= 60 MiB"),
            (f"escalations run peak RSS, {m['catchup']}-message catch-up", f(m["peak_rss_kib"] / 1024, " MiB"), "", "",
             "target <= 100 MiB"),
        ]
        if m.get("database"):
            rows.append((f"database per case ({m['database']['cases']} cases)",
                         f(m["database"]["bytes_per_case"] / 1024, " KiB"), "", "", "target <= 8 KiB"))
    s = fp["startup"]
    rows.append(("escalations cases list, empty database (config cache warm / none)",
                 f"{s['cases_list_s'] * 1000:.0f} / {s['cases_list_no_cache_s'] * 1000:.0f} ms", "",
                 f"{s['python_import_s'] * 1000:.0f} ms python -c 'import sqlite3, email'",
                 f"{s['ratio']:.1f}x / {s['ratio_no_cache']:.1f}x; target <= 3x"))
    return rows


def table(rows: list[tuple[str, str, str, str, str]]) -> str:
    head = ("figure", "ours", "django-helpdesk 2.6.1", "baseline", "ratio / target")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell or "" for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--peer", action="store_true", help="also run django-helpdesk, interleaved with ours")
    parser.add_argument("--rounds", type=int, default=2, help="with --peer: (ours, peer) rounds (default 2)")
    parser.add_argument("--n", type=int, default=2000, help="ingest referrals (default 2000)")
    parser.add_argument("--cases", type=int, default=100_000, help="tick: open cases (default 100000)")
    parser.add_argument("--catchup", type=int, default=5000, help="footprint: catch-up referrals (default 5000)")
    parser.add_argument("--repeats", type=int, default=15, help="footprint: start-up pairs (default 15)")
    parser.add_argument("--smoke", action="store_true", help="every piece in its smoke size; no peer")
    parser.add_argument("--json-out", metavar="FILE", default=None, help="all figures as JSON")
    args = parser.parse_args(argv)
    if args.smoke and args.peer:
        parser.error("--peer is not part of --smoke")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="escalations-report-") as d:
        tmp = Path(d)
        ingest_args = ["--smoke"] if args.smoke else ["--n", str(args.n)]
        if args.peer:
            ingest_args += ["--peer", "--rounds", str(args.rounds)]
        ingest = run_piece("ingest.py", ingest_args, tmp / "ingest.json")
        tick = run_piece("tick.py", ["--smoke"] if args.smoke else ["--cases", str(args.cases)], tmp / "tick.json")
        fp = run_piece("footprint.py", ["--smoke"] if args.smoke else
                       ["--catchup", str(args.catchup), "--repeats", str(args.repeats)], tmp / "footprint.json")
    rounds = ingest if isinstance(ingest, list) else [ingest]
    print(table(ingest_rows(rounds) + tick_rows(tick) + footprint_rows(fp)))
    print(f"\n(N={rounds[0]['n']} referrals, {len(rounds)} round(s); {time.monotonic() - started:.0f} s in all; "
          f"the command: {' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"ingest": ingest, "tick": tick, "footprint": fp}, indent=2,
                                                  default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
