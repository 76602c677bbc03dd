"""The harness's one way of waiting for something with a deadline (on tenacity).

A check returns the awaited value, or None/False while it is not there yet, and may raise to
stop at once (a process that died while starting). After ``timeout`` seconds the wait raises
``error`` with the ``timed_out`` message, which may be computed then (what was seen last).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """What was awaited did not come within the deadline; the message says what and how long."""


def _not_yet(value: object) -> bool:
    return value is None or value is False


def waited(check: Callable[[], object], *, timeout: float, interval: float = 0.5) -> bool:
    """Whether ``check`` came true within ``timeout`` s (no error: the caller goes on anyway)."""
    try:
        wait_until(check, timeout=timeout, interval=interval, timed_out="")
    except WaitTimeout:
        return False
    return True


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.5,
    timed_out: str | Callable[[], str],
    error: type[Exception] = WaitTimeout,
) -> T:
    """``check()``'s first value that is neither None nor False, trying every ``interval`` s."""
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(_not_yet),
    )
    try:
        return retrying(check)  # type: ignore[return-value]
    except RetryError:
        raise error(timed_out() if callable(timed_out) else timed_out) from None
