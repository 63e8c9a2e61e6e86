"""`escalations run` keeps its start-up heap out of full garbage collections (gc.freeze); a service
run inside another program (a test, a benchmark harness that does not ask for it) does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import gc, sys, threading
from pathlib import Path
from escalations.app import build_app
from escalations.settings import Settings

settings = Settings(data_dir=Path(sys.argv[1]), config_dir=Path(sys.argv[2]), smtp_listen_port=0)
app = build_app(settings)
stop = threading.Event()
seen = []
def started(_app):
    seen.append(gc.get_freeze_count())
    stop.set()
app.run(stop, on_started=started, freeze_heap=sys.argv[3] == "yes")
print("frozen", seen[0])
"""


@pytest.mark.parametrize(("freeze", "frozen"), [("yes", True), ("no", False)])
def test_the_service_freezes_its_start_up_heap_only_when_asked(tmp_path: Path, freeze: str, frozen: bool) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "var"), str(CONFIG_DIR), freeze],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "ESCALATIONS_WEB__BIND": "127.0.0.1:0"})
    assert done.returncode == 0, done.stderr[-2000:]
    count = int(done.stdout.split("frozen", 1)[1].split()[0])
    assert (count > 10_000) is frozen, count

