"""The one wait helper: the value once it comes, the reason once the deadline passes."""

from __future__ import annotations

import time

import pytest

from harness.waiting import WaitTimeout, wait_until


def test_the_first_value_that_is_there_is_returned():
    answers = iter([None, False, 0, "ready"])
    assert wait_until(lambda: next(answers), timeout=5, interval=0, timed_out="x") == 0


def test_a_deadline_raises_the_message_computed_then():
    seen = []
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match="still 3 pending"):
        wait_until(
            lambda: seen.append(1),
            timeout=0.3,
            interval=0.05,
            timed_out=lambda: f"still {len(seen) and 3} pending",
        )
    assert 0.3 <= time.monotonic() - started < 3 and len(seen) > 2


def test_a_check_that_raises_stops_the_wait_at_once():
    def check():
        raise RuntimeError("the process died")

    with pytest.raises(RuntimeError, match="the process died"):
        wait_until(check, timeout=30, timed_out="never")


def test_the_error_type_is_the_callers():
    with pytest.raises(ValueError, match="nope"):
        wait_until(lambda: None, timeout=0, interval=0, timed_out="nope", error=ValueError)
