"""The equal-work raw baseline: the pipeline's own rows and mail count, written with nothing but libraries.

After the pipeline has caught up, :func:`snapshot` copies its SQLite database's schema (tables and
indexes, as ``sqlite_master`` has them) and every row. :func:`child_equal` (a child process of
bench/ingest.py) then does the same work per referral as the pipeline did, the plainest way:

- IMAPClient FETCH RFC822 in batches and a stdlib ``email`` parse of each message;
- per batch, one transaction: ``executemany`` of that batch's share of every table's rows, in
  foreign-key order, with the service's pragmas (WAL, synchronous=NORMAL, foreign_keys=ON);
- after the commit, that batch's share of the pipeline's outgoing mails (the very bytes the relay
  captured from it), on one SMTP connection.

A row belongs to the batch of the referral at its position in its table, or to a later batch when
it references a row there, so every reference is satisfied at commit.
"""

from __future__ import annotations

import contextlib
import pickle
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Table:
    name: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
    #: (column index, referenced table, referenced column) per foreign key
    references: list[tuple[int, str, str]]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _read_table(db: sqlite3.Connection, name: str) -> Table:
    cur = db.execute(f"SELECT * FROM {_quote(name)} ORDER BY rowid")
    columns = [d[0] for d in cur.description]
    rows = [tuple(r) for r in cur.fetchall()]
    refs = []
    for fk in db.execute(f"PRAGMA foreign_key_list({_quote(name)})").fetchall():
        _id, _seq, target, src, dst = fk[:5]
        refs.append((columns.index(src), str(target), str(dst or "id")))
    return Table(name, columns, rows, refs)


def snapshot(sqlite_path: Path, mails: list[tuple[str, list[str], bytes]], out: Path) -> dict[str, int]:
    """Schema and rows of the pipeline's database, and the mails it sent, into ``out`` (a pickle);
    returns the rows per table."""
    with contextlib.closing(sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)) as db:
        schema = [str(r[0]) for r in db.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
            "ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, rowid")]
        names = [str(r[0]) for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        tables = [_read_table(db, name) for name in names]
    with open(out, "wb") as f:
        pickle.dump({"schema": schema, "tables": tables, "mails": mails}, f, protocol=pickle.HIGHEST_PROTOCOL)
    return {t.name: len(t.rows) for t in tables}


def _order(tables: list[Table]) -> list[Table]:
    """Referenced tables first (a cycle keeps the remaining order; the commit checks it anyway)."""
    done: list[Table] = []
    left = list(tables)
    while left:
        names = {t.name for t in left}
        ready = [t for t in left if not any(r[1] in names and r[1] != t.name for r in t.references)] or left[:1]
        done.extend(ready)
        left = [t for t in left if t not in ready]
    return done


def assign_batches(tables: list[Table], n: int, batch: int) -> dict[str, list[int]]:
    """The batch of every row: its table position's referral, or later if it references a later row."""
    where: dict[str, list[int]] = {}
    for t in tables:
        count = len(t.rows) or 1
        where[t.name] = [min(n - 1, pos * n // count) // batch for pos in range(len(t.rows))]
    for _ in range(3):  # references are short chains (event -> inbound -> case): a few passes settle
        for t in tables:
            for ci, target, tcol in t.references:
                tt = next((x for x in tables if x.name == target), None)
                if tt is None or tcol not in tt.columns:
                    continue
                key = tt.columns.index(tcol)
                batch_of = {row[key]: b for row, b in zip(tt.rows, where[target], strict=True)}
                rows = where[t.name]
                for i, row in enumerate(t.rows):
                    if row[ci] is not None and row[ci] in batch_of:
                        rows[i] = max(rows[i], batch_of[row[ci]])
    return where


def batches_of(tables: list[Table], n: int, batch: int) -> Iterator[list[tuple[str, list[tuple[Any, ...]]]]]:
    """Per batch: (INSERT statement, rows) for every table, referenced tables first."""
    ordered = _order(tables)
    where = assign_batches(ordered, n, batch)
    for b in range((n + batch - 1) // batch):
        out = []
        for t in ordered:
            rows = [r for r, rb in zip(t.rows, where[t.name], strict=True) if rb == b]
            if rows:
                cols = ", ".join(_quote(c) for c in t.columns)
                marks = ", ".join("?" for _ in t.columns)
                out.append((f"INSERT INTO {_quote(t.name)} ({cols}) VALUES ({marks})", rows))
        yield out


def open_target(path: Path, schema: list[str]) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        db.execute(f"PRAGMA {pragma}")
    for sql in schema:
        db.execute(sql)
    return db


def mails_for(first: int, last: int, n: int, total: int) -> int:
    """The share of ``total`` mails of referrals first..last-1 (spread evenly over n referrals)."""
    return last * total // n - first * total // n


def child_equal(cfg: dict[str, Any], emit: Any, cpu_seconds: Any, max_rss_kib: Any) -> None:
    """Fetch, parse, write the pipeline's rows, send its mail count; emit the timings."""
    import email
    import email.policy
    import smtplib
    import time

    from imapclient import IMAPClient

    with open(cfg["snapshot"], "rb") as f:
        snap = pickle.load(f)
    n, size = int(cfg["n"]), int(cfg["batch"])
    plan = list(batches_of(snap["tables"], n, size))
    del snap["tables"]
    mails: list[tuple[str, list[str], bytes]] = snap["mails"]  # the pipeline's own, as the relay got them
    t0, cpu0 = time.monotonic(), cpu_seconds()
    imap = IMAPClient(cfg["host"], cfg["port"], ssl=False, timeout=30)
    imap.login(cfg["user"], cfg["password"])
    imap.select_folder(cfg["folder"], readonly=True)
    uids = sorted(int(u) for u in imap.search(["UID", "1:*"]))
    db = open_target(Path(cfg["sqlite_path"]), snap["schema"])
    smtp = smtplib.SMTP("127.0.0.1", cfg["relay_port"], timeout=30)
    smtp.ehlo()
    sent = rows = statements = 0
    for b, start in enumerate(range(0, len(uids), size)):
        batch = uids[start:start + size]
        fetched = imap.fetch(batch, ["RFC822"])
        for uid in batch:
            email.message_from_bytes(bytes(fetched[uid][b"RFC822"]), policy=email.policy.default)
        db.execute("BEGIN")
        for sql, values in plan[b] if b < len(plan) else []:
            db.executemany(sql, values)
            rows += len(values)
            statements += 1
        db.execute("COMMIT")
        for _ in range(mails_for(start, start + len(batch), n, len(mails))):
            sender, rcpts, raw = mails[sent]
            smtp.sendmail(sender, rcpts, raw)
            sent += 1
    smtp.quit()
    imap.logout()
    t1, cpu = time.monotonic(), cpu_seconds() - cpu0
    db.close()
    emit("result", t0=t0, t1=t1, cpu_s=cpu, fetched=len(uids), rows=rows, statements=statements, sent=sent,
         maxrss_kib=max_rss_kib())
