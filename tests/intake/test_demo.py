"""`escalations run --demo` as a user runs it: a real process, real SMTP, Ctrl-C to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CONFIG_DIR
from tests.servers import free_port


@pytest.mark.servers
def test_demo_acknowledges_each_partnership_sample(tmp_path: Path) -> None:
    env = {**os.environ, "ESCALATIONS_DATA_DIR": str(tmp_path / "var"), "ESCALATIONS_CONFIG": str(CONFIG_DIR)}
    env.pop("ESCALATIONS_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "escalations", "run", "--demo", "--smtp-port", str(free_port())],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sent = tmp_path / "var" / "sent"

    def acknowledgements() -> list[Path]:
        return [f for f in sorted(sent.glob("*.eml"))
                if b"X-Escalations-Template: referral_acknowledged" in f.read_bytes()]

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(acknowledgements()) < 6:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        files = acknowledgements()
        # The live view polls every 0.5 s: let it print the state in which every ack has gone out
        # (each case now also queues its stage mail, so the last ack can land just after a poll).
        time.sleep(1.2)
    finally:
        proc.send_signal(signal.SIGINT)
        out, errout = proc.communicate(timeout=30)
    assert proc.returncode == 0, errout.decode(errors="replace")[-2000:]
    # Wiltshire's sample is forwarded by a DSL: the forwarder and the practitioner are both acknowledged.
    assert len(files) == 6, out.decode(errors="replace")[-2000:]
    subjects = sorted(next(line for line in f.read_text().splitlines() if line.startswith("Subject:")) for f in files)
    prefixes = sorted(s.split("[", 1)[1].split("-", 1)[0] for s in subjects)
    assert prefixes == ["CH", "HAV", "SUT", "TRI", "WIL", "WIL"]
    text = out.decode()
    assert "Cases" in text
    for f in files:  # the live view reports each case with its acknowledgement sent
        ref = next(line for line in f.read_text().splitlines() if line.startswith("Subject:")).split("[")[1].split("]")[0]
        assert any(ref in line and "ack sent" in line for line in text.splitlines()), text
