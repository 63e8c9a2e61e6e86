#!/usr/bin/env python3
"""Tick cost: does a tick cost what is due, or what is open?

    .venv/bin/python bench/tick.py                    # 100,000 open cases; D = 1, 10, 100
    .venv/bin/python bench/tick.py --cases 20000 --fire 1,10,100 --json-out tick.json
    .venv/bin/python bench/tick.py --smoke            # CI-sized: 300 cases, D = 1, 5

1. Opens one real case the way the service does (``build_app``, ``App.ingest`` of a City & Hackney
   referral, ``process_pending``, the outbox sent to files): its case row, events, timers, inbound
   and outbox rows are the store's own.
2. Clones that case's rows (every table reachable from ``case`` by a foreign key, as the database's
   own schema says) with plain sqlite3 ``executemany``, each clone with fresh ids, its references
   remapped and its unique values made unique, until the database holds N open cases. It does this
   in two steps (N/10, then N), measuring at both sizes.
3. At each size: the median of several ``Workflow.tick(now)`` with nothing due; then, for each D,
   D pending timers of untouched cases are made due (their ``due_at`` set a minute ago) and one tick
   fires them - its milliseconds, and per fired timer.

Printed: ms for each, and the verdicts "nothing-due tick grows with N" (ratio of the two sizes'
medians) and "cost per fired timer grows with N" (same), i.e. O(open cases) or O(work due).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO), str(Path(__file__).resolve().parent)):
    if p not in sys.path:
        sys.path.insert(0, p)


def progress(text: str) -> None:
    print(f"[tick {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class TemplateRows:
    """One real case's rows, per table, and how to clone them."""

    order: list[str]  # tables, referenced first
    columns: dict[str, list[str]]
    rows: dict[str, list[tuple[Any, ...]]]
    fks: dict[str, list[tuple[int, str]]]  # table -> (column index, referenced table) (by id)
    unique_text: dict[str, list[int]]  # table -> indexes of unique text columns
    base: dict[str, int]  # table -> max id before cloning


def _unique_columns(db: sqlite3.Connection, table: str, columns: list[str]) -> list[int]:
    out: set[int] = set()
    for idx in db.execute(f"PRAGMA index_list({quote(table)})").fetchall():
        if idx[2]:  # unique
            for col in db.execute(f"PRAGMA index_info({quote(idx[1])})").fetchall():
                if col[2] in columns and col[2] != "id":
                    out.add(columns.index(col[2]))
    return sorted(out)


def read_template(db: sqlite3.Connection, case_id: int) -> TemplateRows:
    """The case and every row reachable from it by foreign keys (two levels: events -> inbound)."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
    tables = [t for t in tables  # rows with an integer id (the tables a case owns have one)
              if any(c[1] == "id" for c in db.execute(f"PRAGMA table_info({quote(t)})").fetchall())]
    fks = {t: [(fk[3], fk[2]) for fk in db.execute(f"PRAGMA foreign_key_list({quote(t)})").fetchall()]
           for t in tables}
    owned = {"case": {case_id}}
    for _ in range(3):
        for t in tables:
            for col, target in fks[t]:
                if target in owned and t != "case":
                    ids = {r[0] for r in db.execute(
                        f"SELECT id FROM {quote(t)} WHERE {quote(col)} IN ({','.join('?' * len(owned[target]))})",
                        sorted(owned[target]))}
                    owned.setdefault(t, set()).update(ids)
    order = ["case"] + [t for t in tables if t in owned and t != "case"]
    order.sort(key=lambda t: sum(1 for _c, target in fks[t] if target in owned and target != t))
    columns, rows, fkidx, uniq, base = {}, {}, {}, {}, {}
    for t in order:
        cur = db.execute(f"SELECT * FROM {quote(t)} WHERE id IN ({','.join('?' * len(owned[t]))}) ORDER BY id",
                         sorted(owned[t]))
        columns[t] = [d[0] for d in cur.description]
        rows[t] = [tuple(r) for r in cur.fetchall()]
        fkidx[t] = [(columns[t].index(c), target) for c, target in fks[t] if target in owned]
        uniq[t] = [i for i in _unique_columns(db, t, columns[t])
                   if all(isinstance(r[i], str) or r[i] is None for r in rows[t])]
        base[t] = int(db.execute(f"SELECT coalesce(max(id), 0) FROM {quote(t)}").fetchone()[0])
    return TemplateRows(order, columns, rows, fkidx, uniq, base)


def clone_rows(tpl: TemplateRows, k: int, first: int) -> dict[str, list[tuple[Any, ...]]]:
    """The k-th clone (k >= first >= 1) of the template case's rows; ids above ``tpl.base``."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    index = {t: {r[0]: j for j, r in enumerate(tpl.rows[t])} for t in tpl.order}
    for t in tpl.order:
        n = len(tpl.rows[t])
        new_rows = []
        for j, row in enumerate(tpl.rows[t]):
            values = list(row)
            values[0] = tpl.base[t] + (k - first) * n + j + 1
            for ci, target in tpl.fks[t]:
                old = values[ci]
                if old is not None and old in index[target]:
                    values[ci] = tpl.base[target] + (k - first) * len(tpl.rows[target]) + index[target][old] + 1
            for ci in tpl.unique_text[t]:
                if values[ci] is not None:
                    values[ci] = unique_text(tpl.columns[t][ci], str(values[ci]), k)
            new_rows.append(tuple(values))
        out[t] = new_rows
    return out


def unique_text(column: str, value: str, k: int) -> str:
    if column == "reference":  # keep a reference's shape: PREFIX-YEAR-NUMBER
        head, _, _tail = value.rpartition("-")
        return f"{head}-{k + 10_000_000}" if head else f"{value}-{k}"
    return f"{value}~c{k}"


def grow(db_path: Path, tpl: TemplateRows, first: int, last: int) -> None:
    """Add clones first..last-1, in transactions of a few thousand cases."""
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # set-up only, not the measured path
    try:
        for t in tpl.order:  # ticks since the last step added rows (fired timers' mail and timers)
            tpl.base[t] = int(db.execute(f"SELECT coalesce(max(id), 0) FROM {quote(t)}").fetchone()[0])
        chunk = 2000
        for start in range(first, last, chunk):
            batch: dict[str, list[tuple[Any, ...]]] = {t: [] for t in tpl.order}
            for k in range(start, min(last, start + chunk)):
                for t, rows in clone_rows(tpl, k, first).items():
                    batch[t].extend(rows)
            db.execute("BEGIN")
            for t in tpl.order:
                cols = tpl.columns[t]
                db.executemany(f"INSERT INTO {quote(t)} ({', '.join(quote(c) for c in cols)}) "
                               f"VALUES ({', '.join('?' * len(cols))})", batch[t])
            db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("ANALYZE")
    finally:
        db.close()


def open_template_case(tmp: Path) -> tuple[Any, Path, int]:
    """A real app with one real case (its acknowledgement sent to files); (app, db path, case id)."""
    import ingest

    from escalations.app import build_app
    from escalations.settings import Settings

    settings = Settings(data_dir=tmp / "var", config_dir=REPO / "config")  # type: ignore[call-arg]
    app = build_app(settings)
    _mid, raw = ingest.make_referral(0, "tick")
    app.ingest(raw)
    outcomes = app.process_pending()
    if not outcomes or outcomes[0].status != "done":
        raise SystemExit(f"BROKEN: the template referral was not processed: {outcomes}")
    app.send_outbox()
    db_path = tmp / "var" / "escalations.sqlite3"
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        case_id = int(db.execute('SELECT id FROM "case"').fetchone()[0])
    return app, db_path, case_id


def time_tick(app: Any, now: datetime) -> tuple[float, int]:
    t = time.perf_counter()
    fired = app.workflow.tick(now)
    return (time.perf_counter() - t) * 1000, len(fired)


def make_due(app: Any, d: int, now: datetime, used: set[int]) -> int:
    """D pending timers of distinct cases not touched before, due a minute ago; returns how many."""
    import sqlalchemy as sa

    from escalations.cases.models import Timer

    with app.store.engine.begin() as c:
        rows = c.execute(sa.select(Timer.id, Timer.case_id).where(Timer.status == "pending")
                         .order_by(Timer.case_id.desc()).limit(d * 8 + 50)).all()
        picked: list[int] = []
        for tid, cid in rows:
            if cid not in used and len(picked) < d:
                used.add(cid)
                picked.append(tid)
        c.execute(sa.update(Timer).where(Timer.id.in_(picked)).values(due_at=now - timedelta(minutes=1)))
    return len(picked)


def measure(app: Any, fire: Sequence[int], repeats: int, used: set[int]) -> dict[str, Any]:
    now = datetime.now(UTC)
    idle = []
    for _ in range(repeats):
        ms, fired = time_tick(app, now)
        if fired:
            raise SystemExit(f"BROKEN: a tick with nothing due fired {fired} timers")
        idle.append(ms)
    by_d = {}
    for d in fire:
        made = make_due(app, d, now, used)
        ms, fired = time_tick(app, now)
        if fired != made:
            raise SystemExit(f"BROKEN: {made} timers made due, {fired} fired")
        by_d[d] = {"ms": ms, "fired": fired, "ms_per_timer": ms / max(fired, 1)}
    return {"idle_ms": statistics.median(idle), "idle_samples": idle, "fire": by_d}


def count_open(db_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return int(db.execute("SELECT count(*) FROM \"case\" WHERE status NOT IN ('closed', 'resolved')").fetchone()[0])


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted({max(2, args.cases // 10), args.cases})
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="escalations-tick-"))
        stack.callback(shutil.rmtree, tmp, True)
        app, db_path, case_id = open_template_case(tmp)
        stack.callback(app.store.engine.dispose)
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            tpl = read_template(db, case_id)
        progress(f"template case: rows {', '.join(f'{t} {len(r)}' for t, r in tpl.rows.items())}")
        have, used, results = 1, set(), {}
        for size in sizes:
            t = time.monotonic()
            grow(db_path, tpl, have, size)
            have = size
            open_cases = count_open(db_path)
            progress(f"{size} cases ({open_cases} open) made in {time.monotonic() - t:.1f} s; "
                     f"database {db_path.stat().st_size / 2**20:.0f} MiB")
            results[size] = {"open_cases": open_cases, **measure(app, args.fire, args.repeats, used)}
            r = results[size]
            progress(f"N={size}: nothing due {r['idle_ms']:.2f} ms; "
                     + "; ".join(f"D={d} {v['ms']:.1f} ms ({v['ms_per_timer']:.2f} ms/timer)" for d, v in r["fire"].items()))
    return {"sizes": sizes, "results": results, "template_rows": {t: len(r) for t, r in tpl.rows.items()}}


def verdicts(out: dict[str, Any]) -> dict[str, Any]:
    small, large = (out["results"][s] for s in (out["sizes"][0], out["sizes"][-1]))
    n_ratio = out["sizes"][-1] / out["sizes"][0]
    idle_ratio = large["idle_ms"] / max(small["idle_ms"], 1e-6)
    d_max = max(large["fire"])
    per_small = small["fire"][d_max]["ms_per_timer"]
    per_large = large["fire"][d_max]["ms_per_timer"]
    return {"n_ratio": n_ratio, "idle_ratio": idle_ratio, "per_timer_ratio": per_large / max(per_small, 1e-6),
            "idle_grows_with_n": idle_ratio > 1 + 0.25 * (n_ratio - 1) ** 0.5,
            "per_timer_grows_with_n": per_large / max(per_small, 1e-6) > 1 + 0.25 * (n_ratio - 1) ** 0.5}


def report(out: dict[str, Any]) -> str:
    v = out["verdicts"]
    lines = [f"tick benchmark (SQLite): template case rows {out['template_rows']}"]
    for size in out["sizes"]:
        r = out["results"][size]
        lines.append(f"  N={size:>7} open cases: nothing due {r['idle_ms']:8.2f} ms (median of {len(r['idle_samples'])})"
                     + "".join(f" | D={d}: {f['ms']:8.1f} ms = {f['ms_per_timer']:.2f} ms/timer"
                               for d, f in r["fire"].items()))
    lines.append(f"  N x{v['n_ratio']:.0f}: nothing-due tick x{v['idle_ratio']:.2f} -> "
                 f"{'grows with N (O(open cases))' if v['idle_grows_with_n'] else 'flat in N'}; "
                 f"per fired timer x{v['per_timer_ratio']:.2f} -> "
                 f"{'grows with N: D timers cost O(D x open cases)' if v['per_timer_grows_with_n'] else 'flat in N: O(D)'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=100_000, help="open cases at the larger size (default 100000)")
    parser.add_argument("--fire", default="1,10,100", help="D values: timers made due per measured tick")
    parser.add_argument("--repeats", type=int, default=7, help="nothing-due ticks per size (median)")
    parser.add_argument("--smoke", action="store_true", help="300 cases, D = 1, 5, 3 repeats")
    parser.add_argument("--json-out", metavar="FILE", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.cases, args.fire, args.repeats = 300, "1,5", 3
    args.fire = [int(x) for x in str(args.fire).split(",") if x.strip()]
    import logging

    logging.disable(logging.INFO)  # a log line per fired timer is not what is measured here
    out = run(args)
    out["verdicts"] = verdicts(out)
    print(report(out))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
