"""Logs never carry an exception's text (it can quote a child's details), only its type and frames."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import structlog


def test_logged_exception_keeps_frames_not_text(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    log = structlog.get_logger("escalations.test")
    value = "02/03/2015 for Poppy Testchild"  # as if read from a message
    try:
        raise ValueError(f"date of birth {value} is not valid")
    except ValueError:
        log.exception("timer.failed", case="CH-2026-0001")
    assert "timer.failed" in caplog.text and "CH-2026-0001" in caplog.text
    assert "ValueError" in caplog.text and "test_logs.py" in caplog.text
    assert "Testchild" not in caplog.text and "02/03/2015" not in caplog.text


def test_other_libraries_exceptions_lose_their_text_on_our_handler() -> None:
    from escalations.logs import FramesOnly

    value = "Poppy Testchild"
    try:
        raise KeyError(value)
    except KeyError:
        import sys

        record = logging.LogRecord("aiosmtpd", logging.ERROR, __file__, 1, "handler failed: %s", ("x",),
                                   sys.exc_info())
    assert FramesOnly().filter(record)
    text = logging.Formatter("%(message)s").format(record)
    assert "handler failed: x [KeyError]" in text and "test_logs.py" in text
    assert "Testchild" not in text


def test_header_values_are_hashed_in_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    import structlog

    log = structlog.get_logger("escalations.test")
    with caplog.at_level(logging.INFO):
        log.info("thing.happened", message_id="Amara-Testchild-2015@example.org", case="CH-2026-0001")
    assert "Amara" not in caplog.text and "sha256:" in caplog.text and "CH-2026-0001" in caplog.text


def test_the_demo_file_log_keeps_frames_not_exception_text(tmp_path: Path) -> None:
    from escalations.cli.run import _log_to_file

    path = tmp_path / "escalations.log"
    _log_to_file(path)
    value = "".join(["Am", "ara Testchild 01/02/2015"])  # as if read from a message
    try:
        raise ValueError(value)
    except ValueError:
        logging.getLogger("some.library").exception("failed")
    for h in logging.getLogger().handlers:
        h.flush()
    text = path.read_text()
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(h)
        h.close()
    from escalations.logs import configure_logging

    configure_logging("json")
    assert "failed [ValueError]" in text and "Amara" not in text
