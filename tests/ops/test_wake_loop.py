"""service.wake_loop: runs on a wake-up, at least ``gap`` apart, and never loses a wake-up."""

from __future__ import annotations

import threading
import time

from escalations.service import wake_loop


def _start(gap: float, runs: list[float], ran: threading.Event) -> tuple[threading.Event, threading.Event,
                                                                         threading.Thread]:
    stop, wake = threading.Event(), threading.Event()

    def fn() -> None:
        runs.append(time.monotonic())
        ran.set()

    thread = threading.Thread(target=wake_loop, args=(stop, wake, 60.0, fn, "test", gap), daemon=True)
    thread.start()
    return stop, wake, thread


def _woken_and_ran(wake: threading.Event, ran: threading.Event) -> None:
    ran.clear()
    wake.set()
    assert ran.wait(10), "a wake-up was lost"


def test_wake_ups_within_the_gap_are_kept_for_one_later_run() -> None:
    runs: list[float] = []
    ran = threading.Event()
    stop, wake, thread = _start(0.5, runs, ran)
    try:
        _woken_and_ran(wake, ran)
        ran.clear()
        for _ in range(5):  # while the gap runs: one run for all of them, after it
            wake.set()
            time.sleep(0.01)
        assert ran.wait(10), "a wake-up during the gap was lost"
        time.sleep(0.7)
        assert len(runs) == 2
        assert runs[1] - runs[0] >= 0.5
    finally:
        stop.set()
        wake.set()
        thread.join(10)
    assert not thread.is_alive()


def test_no_gap_runs_on_every_wake_up_and_stop_ends_a_wait() -> None:
    runs: list[float] = []
    ran = threading.Event()
    stop, wake, thread = _start(0.0, runs, ran)
    for _ in range(3):
        _woken_and_ran(wake, ran)
    assert len(runs) == 3
    stop.set()
    wake.set()
    thread.join(10)
    assert not thread.is_alive() and len(runs) == 3


def test_a_stop_during_the_gap_ends_the_loop_without_a_run() -> None:
    runs: list[float] = []
    ran = threading.Event()
    stop, wake, thread = _start(30.0, runs, ran)
    _woken_and_ran(wake, ran)
    wake.set()  # waits out the 30 s gap ...
    time.sleep(0.05)
    stop.set()  # ... unless stopped
    thread.join(10)
    assert not thread.is_alive() and len(runs) == 1
