"""The benchmark scripts' smoke modes run and report (their figures are never asserted).

bench/ingest.py --smoke is run by .ci/run itself; these cover the other scripts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers.dovecot import _require_dovecot

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(script: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCALATIONS_")}
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=BENCH.parent)


def test_tick_smoke_fires_what_it_made_due(tmp_path: Path) -> None:
    out = tmp_path / "tick.json"
    done = _run("tick.py", "--smoke", "--json-out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["sizes"] == [30, 300]
    for size in figures["sizes"]:
        result = figures["results"][str(size)]
        assert result["open_cases"] == size
        assert {d: f["fired"] for d, f in result["fire"].items()} == {"1": 1, "5": 5}
    assert "nothing due" in done.stdout


@pytest.mark.servers
def test_footprint_smoke_measures_the_real_command(tmp_path: Path) -> None:
    _require_dovecot()
    out = tmp_path / "footprint.json"
    done = _run("footprint.py", "--smoke", "--json-out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["memory"]["catchup"] == 30 and figures["memory"]["peak_rss_kib"] > 0
    assert figures["memory"]["database"]["cases"] == 31
    assert figures["memory"]["restart_idle_rss_kib"] > 0  # a second start on the same database
    assert figures["startup"]["repeats"] == 3 and figures["startup"]["cases_list_s"] > 0


def test_peer_project_files_are_valid_python() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import peer_helpdesk
    finally:
        sys.path.remove(str(BENCH))
    compile(peer_helpdesk.SETTINGS.format(relay_port=2525, mailbox="a@example.org"), "settings.py", "exec")
    compile(peer_helpdesk.MAKE_QUEUE.format(mailbox="a@example.org", port=143, user="u", password="p",
                                            folder="Peer"), "queue.py", "exec")
    compile(peer_helpdesk.URLS, "urls.py", "exec")


def test_redact_smoke_compares_with_its_baseline(tmp_path: Path) -> None:
    out = tmp_path / "redact.json"
    done = _run("redact.py", "--smoke", "--json-out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["cases"] == 50 and result["checked_equal"] is True
    assert set(result["us_per_referral"]) == {"service", "baseline"} and "ratio service/baseline" in done.stdout
