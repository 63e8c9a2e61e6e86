#!/usr/bin/env python3
"""Redaction per referral: making a new case's redactor and redacting its two mails.

    .venv/bin/python bench/redact.py                  # 500 cases, best of 7
    .venv/bin/python bench/redact.py --cases 2000 --repeats 9 --json-out redact.json
    .venv/bin/python bench/redact.py --smoke          # CI-sized: 50 cases, best of 2

Each case is a bench referral (``bench/ingest.py``'s, its child named uniquely, so neither ``re``'s
cache nor the service's cache of redactors helps): ``Redactor.for_case`` with the partnership's kept
strings, then two texts redacted, as the acknowledgement and the stage mail are (the referral as
written, and its concern quoted under our footer, with an em dash as every real mail has). Timed in
one run, alternated, best of ``--repeats``:

* **service**: the redactor as the service makes it (names found in folded text, prefilters);
* **baseline**: the same redactor finding names by a compiled pattern and trying every pattern at every
  place (``literal=False, guard=False``): the construction of 2026-12-02, before both.

Both must give the same text (checked for every case); the ratio is printed. A figure, never a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import ingest  # noqa: E402  (bench/ingest.py: the referrals)

from escalations.routing.redact import Redactor  # noqa: E402

KEEP = ("City & Hackney Safeguarding Children Partnership", ingest.MAILBOX)
FOOTER = ("\n--\nCity & Hackney Safeguarding Children Partnership\nResolving professional differences \u2014 "
          f"{ingest.MAILBOX}\nThis message was sent automatically. Names are shown as initials.\n")


def cases(n: int, run_id: str) -> list[tuple[str, str, tuple[str, str]]]:
    """(child's name, date of birth, the two texts) of ``n`` distinct referrals."""
    out = []
    for i in range(n):
        _, raw = ingest.make_referral(i, run_id)
        msg = message_from_bytes(raw, policy=policy.default)
        body = msg.get_body().get_content()  # type: ignore[union-attr]
        fields = dict(line.split(": ", 1) for line in body.splitlines() if ": " in line)
        child, dob = fields["Name of child(ren)"], fields["Date of birth"]
        day, month, year = dob.split("/")
        concern = body.split("nature of concern:\n", 1)[1].split("\n\n", 1)[0]
        stage = f"Dear colleague,\n\nConcern: {concern}\nChild: {child}, born {dob}.\n{FOOTER}"
        out.append((child, f"{year}-{month}-{day}", (body + FOOTER, stage)))
    return out


def timed(make: Callable[[str, str], Redactor], work: list[tuple[str, str, tuple[str, str]]],
          outputs: list[tuple[str, str]] | None) -> float:
    start = time.perf_counter()
    for k, (child, dob, (first, second)) in enumerate(work):
        r = make(child, dob)
        a, b = r.redact(first), r.redact(second)
        if outputs is not None:
            outputs[k] = (a, b)
    return time.perf_counter() - start


def run(n: int, repeats: int) -> dict[str, Any]:
    def service(child: str, dob: str) -> Redactor:
        return Redactor.for_case([child], [dob], None, keep=KEEP)

    def baseline(child: str, dob: str) -> Redactor:
        return Redactor.for_case([child], [dob], None, keep=KEEP, guard=False, literal=False)

    best = {"service": float("inf"), "baseline": float("inf")}
    checked = False
    for repeat in range(repeats):
        # fresh names each repeat: a new case's pattern is never in re's cache
        work = cases(n, f"r{repeat}")
        ours: list[tuple[str, str]] = [("", "")] * n
        theirs: list[tuple[str, str]] = [("", "")] * n
        order = [("service", service, ours), ("baseline", baseline, theirs)]
        for name, make, out in order if repeat % 2 == 0 else order[::-1]:
            best[name] = min(best[name], timed(make, work, out))
        if ours != theirs:
            raise SystemExit("redact.py: the service's redactor and the baseline disagree on a text")
        checked = True
    us = {k: v * 1e6 / n for k, v in best.items()}
    return {"cases": n, "repeats": repeats, "checked_equal": checked, "us_per_referral": us,
            "ratio_service_to_baseline": us["service"] / us["baseline"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=500, help="referrals per repeat (default 500)")
    parser.add_argument("--repeats", type=int, default=7, help="alternated repeats; best of (default 7)")
    parser.add_argument("--smoke", action="store_true", help="50 cases, 2 repeats")
    parser.add_argument("--json-out", metavar="FILE", default=None)
    args = parser.parse_args(argv)
    n, repeats = (50, 2) if args.smoke else (args.cases, args.repeats)
    if n < 1 or repeats < 1:
        parser.error("--cases and --repeats must be at least 1")
    result = run(n, repeats)
    us = result["us_per_referral"]
    print(f"redaction per referral (a new case's redactor + its two mails), {n} cases, best of {repeats}:")
    print(f"  service   {us['service']:7.1f} us")
    print(f"  baseline  {us['baseline']:7.1f} us  (names by a compiled pattern, every pattern tried everywhere)")
    print(f"  ratio service/baseline {result['ratio_service_to_baseline']:.2f}; same text out for every case")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
