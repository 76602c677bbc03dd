"""The harness's one lock mechanism: ``flock`` on a file beside the state it guards.

A lock held by a process goes with it, also after a ``kill -9``; lock files are never removed
(a process may be waiting on one), so they live in the state root, outside any stack's folder.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from harness.paths import private_dir
from harness.waiting import wait_until


class LockTimeout(TimeoutError):
    """The lock was not had within the time given; the message says which and how long."""


def _try(handle: IO[str], mode: int) -> bool:
    try:
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _acquire(handle: IO[str], mode: int, timeout: float | None, path: Path) -> None:
    if timeout is None:
        fcntl.flock(handle, mode)
        return
    wait_until(
        lambda: _try(handle, mode),
        timeout=timeout,
        interval=0.2,
        timed_out=f"{path}: not had within {timeout:.0f} s",
        error=LockTimeout,
    )


@contextmanager
def held(
    path: Path,
    *,
    exclusive: bool = True,
    timeout: float | None = None,
    waiting: Callable[[], None] | None = None,
) -> Iterator[IO[str]]:
    """``path`` locked for the block (shared, or exclusive); ``waiting`` is called once when
    another process holds it first."""
    private_dir(path.parent)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    with path.open("a") as handle:
        if not _try(handle, mode):
            if waiting:
                waiting()
            _acquire(handle, mode, timeout, path)
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def try_exclusive(handle: IO[str], *, shared_again: bool = True) -> bool:
    """Turns the lock on ``handle`` exclusive if no other process holds it; False if one does.

    Linux drops the old lock before it tries the new one, so on False the lock is taken shared
    again (``shared_again``) rather than lost.
    """
    if _try(handle, fcntl.LOCK_EX):
        return True
    if shared_again:
        fcntl.flock(handle, fcntl.LOCK_SH)
    return False
