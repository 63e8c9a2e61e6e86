#!/usr/bin/env python3
"""Fuzz run: generated and mutated messages through the whole process step.

    .venv/bin/python bench/fuzz.py                 # 10,000 messages (a few minutes)
    .venv/bin/python bench/fuzz.py --smoke         # CI: 200 messages
    .venv/bin/python bench/fuzz.py --count 2000 --seed 7

Each message is made from a seed mail (the hostile corpus in tests/fixtures/mail and the demo
referrals) by a few random mutations: header lines duplicated, dropped or rewritten (From variants
from the trust issue, odd charsets, broken encoded words, deep or wide multipart, truncation, byte
flips, NULs, long lines). Every message is stored through the service's one intake seam
(``App.ingest``) and processed by the real processor with the real workflow, against SQLite in a
temporary directory, outgoing mail written to files.

What counts: each message must end as done (a case, a reply, an auto-reply...) or as a quarantine
entry with a fixed reason code. A quarantine with the code ``processing_error`` means an exception
escaped the processor's own handling: that is a failure (exit status 1), listed with its type.
The figures (count, outcomes, slowest message, messages/s) are printed, never asserted.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FROMS = [
    "Jo Bloggs <jo.bloggs@school.example.org>", "sam@x.example.org <eve@attacker.example.com>",
    "Sam <sam@x.example.org> <eve@attacker.example.com>", "sam@x.example.org, eve@attacker.example.com",
    "=?utf-8?q?Sam=3A_x?= <attacker@example.net>", "<>", "undisclosed-recipients:;",
    "Jo \x01<jo@example.org>", "Jo\u2028 <jo@example.org>", "=?punycode?q?abc?= <p@example.org>",
    "\"jo@school.example.org\" <eve@attacker.example.com>", "x" * 3000 + "@example.org",
]
CHARSETS = ["punycode", "utf-7", "idna", "rot13", "x-unknown", "utf-8\x00", "iso-8859-1", "bogus", "utf-16",
            "base64", "zlib", "hex", "utf-32-be", "cp1252", "\"\"", "utf8'en'x"]
HEADERS = [
    b"Content-Type: text/plain; charset=%s", b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable", b"Auto-Submitted: auto-replied (Amara Testchild 01/02/2015)",
    b"Authentication-Results: mx.example.org; dmarc=pass header.from=example.org",
    b"Subject: =?utf-8?B?broken", b"Subject: Re: [CH-2026-0001] Stage 1", b"In-Reply-To: <x@y>",
    b"Content-Type: multipart/mixed; boundary=\"b\"", b"Date: not a date", b"Sender: eve@attacker.example.com",
    b"X-Original-To: chscp@hackney.gov.uk", b"Return-Path: <>", b"Precedence: bulk",
]


def seeds() -> list[bytes]:
    out = [p.read_bytes() for p in sorted((REPO / "tests" / "fixtures" / "mail").glob("*.eml"))]
    out += [p.read_bytes() for p in sorted((REPO / "escalations" / "demo").glob("*.eml"))]
    return out


def _split(raw: bytes) -> tuple[list[bytes], bytes]:
    head, sep, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    return head.split(b"\n"), body if sep else b""


Mail = tuple[list[bytes], bytes]  # header lines, body


def _dup_header(lines: list[bytes], body: bytes, rng: random.Random) -> Mail | None:
    if not lines:
        return None
    lines.insert(rng.randrange(len(lines) + 1), rng.choice(lines))
    return lines, body


def _drop_header(lines: list[bytes], body: bytes, rng: random.Random) -> Mail | None:
    if not lines:
        return None
    lines.pop(rng.randrange(len(lines)))
    return lines, body


def _other_from(lines: list[bytes], body: bytes, rng: random.Random) -> Mail | None:
    lines = [ln for ln in lines if not ln.lower().startswith(b"from:")]
    lines.insert(0, b"From: " + rng.choice(FROMS).encode("utf-8", "surrogateescape"))
    return lines, body


def _odd_header(lines: list[bytes], body: bytes, rng: random.Random) -> Mail | None:
    h = rng.choice(HEADERS)
    lines.append(h % rng.choice(CHARSETS).encode("latin-1", "replace") if b"%s" in h else h)
    return lines, body


def _truncate(lines: list[bytes], body: bytes, rng: random.Random) -> Mail | None:
    return (lines, body[:rng.randrange(len(body))]) if body else None


def _flip_bytes(lines: list[bytes], body: bytes, rng: random.Random) -> Mail | None:
    if not body:
        return None
    b = bytearray(body)
    for _ in range(rng.randint(1, 20)):
        b[rng.randrange(len(b))] = rng.randrange(256)
    return lines, bytes(b)


def _nul_tail(lines: list[bytes], body: bytes, rng: random.Random) -> Mail | None:
    return lines, body + b"\x00" * rng.randint(1, 50)


def _deep_nesting(lines: list[bytes], body: bytes, rng: random.Random) -> Mail | None:
    depth = rng.choice([5, 50, 300])
    nested = b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=\"b%d\"\n\n" % (i, i + 1)
                      for i in range(depth))
    lines = [ln for ln in lines if not ln.lower().startswith(b"content-type")]
    lines.append(b"Content-Type: multipart/mixed; boundary=\"b0\"")
    return lines, nested + body


def _many_parts(lines: list[bytes], body: bytes, rng: random.Random) -> Mail | None:
    parts = rng.choice([10, 200, 2000])
    lines = [ln for ln in lines if not ln.lower().startswith(b"content-type")]
    lines.append(b"Content-Type: multipart/mixed; boundary=\"p\"")
    return lines, b"".join(b"--p\nContent-Type: text/plain\n\nline %d\n" % i for i in range(parts)) + \
        b"--p\n\n" + body + b"\n--p--\n"


def _long_header(lines: list[bytes], body: bytes, rng: random.Random) -> Mail | None:
    lines.append(b"X-Long: " + b"a" * rng.choice([998, 5000, 100_000]))
    return lines, body


def _bad_bytes_in_header(lines: list[bytes], body: bytes, rng: random.Random) -> Mail | None:
    if not lines:
        return None
    i = rng.randrange(len(lines))
    lines[i] = lines[i] + b"\xff\xfe\x80"
    return lines, body


def _line_ends(lines: list[bytes], body: bytes, rng: random.Random) -> Mail:
    return lines, body.replace(b"\n", b"\r\n") if rng.random() < 0.5 else body.replace(b"\n", b"\r")


#: Drawn uniformly from 12: the last two (and any that does not apply) change the line ends.
MUTATIONS = (_dup_header, _drop_header, _other_from, _odd_header, _truncate, _flip_bytes, _nul_tail,
             _deep_nesting, _many_parts, _long_header, _bad_bytes_in_header, _line_ends)


def mutate(raw: bytes, rng: random.Random) -> bytes:
    lines, body = _split(raw)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(12)
        changed = MUTATIONS[op](lines, body, rng) if op < len(MUTATIONS) else None
        lines, body = changed if changed is not None else _line_ends(lines, body, rng)
    return b"\n".join(lines) + b"\n\n" + body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10_000, help="messages to generate (default 10,000)")
    ap.add_argument("--seed", type=int, default=20261201, help="random seed (a run can be replayed)")
    ap.add_argument("--smoke", action="store_true", help="CI mode: 200 messages")
    args = ap.parse_args()
    count = 200 if args.smoke else args.count

    from escalations.app import build_app
    from escalations.logs import configure_logging
    from escalations.settings import Settings

    configure_logging("json", level=40)
    rng = random.Random(args.seed)
    pool = seeds()
    with tempfile.TemporaryDirectory(prefix="escalations-fuzz-") as tmp:
        app = build_app(Settings(data_dir=Path(tmp) / "var", config_dir=REPO / "config",
                                 database_url=f"sqlite:///{Path(tmp) / 'fuzz.sqlite3'}", smtp_intake_enabled=False))
        outcomes: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        slowest = (0.0, -1)
        start = time.perf_counter()
        for n in range(count):
            raw = mutate(rng.choice(pool), rng) + b"\n-- fuzz %d\n" % n  # distinct bytes and fingerprints
            t0 = time.perf_counter()
            stored = app.ingest(raw)
            results = app.process_pending()
            took = time.perf_counter() - t0
            if took > slowest[0]:
                slowest = (took, n)
            if not stored.created:
                outcomes["duplicate"] += 1
            for o in results:
                # a quarantine reason: "code[:detail] [limits: ...]"; count by code, limits apart
                code = o.detail.split("\n", 1)[0].split(" [", 1)[0].split(":", 1)[0] \
                    if o.status == "quarantined" else o.kind
                outcomes[f"{o.status}:{code}"] += 1
                if "[limits:" in o.detail:
                    outcomes["  (of which some parts skipped by a limit)"] += 1
                if o.status == "quarantined" and code == "processing_error":
                    row = app.store.get_inbound(o.inbound_id)
                    failures[(row.error or "").rsplit("\n", 1)[-1] if row else "?"] += 1
            if (n + 1) % max(1, count // 10) == 0:
                print(f"  {n + 1}/{count} messages", flush=True)
        elapsed = time.perf_counter() - start
        app.store.engine.dispose()
    print(f"fuzz: {count} messages (seed {args.seed}) in {elapsed:.1f} s, {count / elapsed:.0f} msg/s")
    for k, v in sorted(outcomes.items()):
        print(f"  {k:40} {v}")
    print(f"slowest message: #{slowest[1]} {slowest[0] * 1000:.0f} ms (replay with --seed {args.seed})")
    if failures:
        print(f"UNCAUGHT exceptions: {sum(failures.values())}")
        for k, v in failures.most_common():
            print(f"  {k}: {v}")
        return 1
    print("uncaught exceptions: 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
