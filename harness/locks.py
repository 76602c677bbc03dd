"""The harness's one lock mechanism: ``flock`` on a file beside the state it guards.

A lock held by a process goes with it, also after a ``kill -9``; lock files are never removed
(a process may be waiting on one), so they live in the state root, outside any stack's folder,
and are opened without following links.

``held`` is a lock for the length of a block. A ``Lease`` is a process's share of something
other processes use too (a stack): held shared while in use, taken alone to remove the thing.
A process has one lease object per file, so nested and repeated uses in one process never lock
each other out (flock conflicts between two open files even within one process).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from harness.paths import private_dir
from harness.waiting import wait_until, waited


class LockTimeout(TimeoutError):
    """The lock was not had within the time given; the message says which and how long."""


class LeaseInUse(RuntimeError):
    """Another process holds the lease, so this one cannot have it alone."""


def _open(path: Path) -> int:
    private_dir(path.parent)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)


def _try(descriptor: int, mode: int) -> bool:
    try:
        fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def held(
    path: Path,
    *,
    exclusive: bool = True,
    timeout: float | None = None,
    waiting: Callable[[], None] | None = None,
) -> Iterator[None]:
    """``path`` locked for the block (shared, or exclusive); ``waiting`` is called once when
    another process holds it first; LockTimeout after ``timeout`` seconds (None: no limit)."""
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    descriptor = _open(path)
    try:
        if not _try(descriptor, mode):
            if waiting:
                waiting()
            if timeout is None:
                fcntl.flock(descriptor, mode)
            else:
                wait_until(
                    lambda: _try(descriptor, mode),
                    timeout=timeout,
                    interval=0.2,
                    timed_out=f"{path}: not had within {timeout:.0f} s",
                    error=LockTimeout,
                )
        yield
    finally:
        os.close(descriptor)


class Lease:
    """This process's lease on ``path``: ``hold`` it shared while using what it guards,
    ``alone`` to have it exclusive for a block (LeaseInUse if other processes keep theirs)."""

    _mine: ClassVar[dict[Path, Lease]] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None
        self._holds = 0
        self._alone = 0

    @classmethod
    def of(cls, path: Path) -> Lease:
        """The process's one lease object for ``path``."""
        with cls._guard:
            return cls._mine.setdefault(Path(path), cls(Path(path)))

    def hold(self) -> None:
        """One more hold of this process (shared with other processes)."""
        if self._descriptor is None:
            self._descriptor = _open(self.path)
            fcntl.flock(self._descriptor, fcntl.LOCK_SH)
        self._holds += 1

    def release(self) -> None:
        """One hold less; the lease goes when this process holds it no more."""
        self._holds = max(0, self._holds - 1)
        if self._holds == 0 and self._descriptor is not None and not self._alone:
            os.close(self._descriptor)
            self._descriptor = None

    @contextmanager
    def alone(self, wait_seconds: float, describe: str) -> Iterator[None]:
        """The lease exclusive for the block, once no other process holds it (waiting up to
        ``wait_seconds``); LeaseInUse, saying ``describe`` is in use, if they keep it."""
        self.hold()
        try:
            if not self._alone:
                descriptor = self._descriptor
                assert descriptor is not None
                if not waited(lambda: _try(descriptor, fcntl.LOCK_EX), timeout=wait_seconds):
                    # Linux dropped the shared lock while trying: take it back if it comes.
                    waited(lambda: _try(descriptor, fcntl.LOCK_SH), timeout=wait_seconds)
                    raise LeaseInUse(f"{describe} is in use by another process ({self.path})")
            self._alone += 1
            try:
                yield
            finally:
                self._alone -= 1
                if not self._alone and self._descriptor is not None:
                    fcntl.flock(self._descriptor, fcntl.LOCK_SH)
        finally:
            self.release()
