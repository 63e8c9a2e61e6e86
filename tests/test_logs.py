"""Logs never carry an exception's text (it can quote a child's details), only its type and frames."""

from __future__ import annotations

import logging

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
    from escalations.logs import _FramesOnly

    value = "Poppy Testchild"
    try:
        raise KeyError(value)
    except KeyError:
        import sys

        record = logging.LogRecord("aiosmtpd", logging.ERROR, __file__, 1, "handler failed: %s", ("x",),
                                   sys.exc_info())
    assert _FramesOnly().filter(record)
    text = logging.Formatter("%(message)s").format(record)
    assert "handler failed: x [KeyError]" in text and "test_logs.py" in text
    assert "Testchild" not in text
