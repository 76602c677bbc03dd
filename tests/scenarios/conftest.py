"""One stack for the whole test session, shared by every pytest-xdist worker.

The first worker to get the lock brings the stack up (or finds it running); the others reuse it.
The controller (the only process without ``workerinput``) takes it down at the end, unless it
was already running when the session started or ML_TESTBED_KEEP=1.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from filelock import FileLock

from harness.cluster.engine import NoContainerEngine, ensure_docker
from harness.paths import private_dir
from harness.stack import RunningStack, Stack, StackConfig
from tests.requirements import unavailable

# Stack bring-up builds images and Kubernetes on a cold machine: far longer than a test.
_UP_LOCK_TIMEOUT_SECONDS = 3600
_WAS_RUNNING = pytest.StashKey[bool]()


def _stack() -> Stack:
    return Stack(StackConfig(), keep=True)


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    if _is_controller(session.config):
        session.config.stash[_WAS_RUNNING] = _stack().is_running()


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if not _is_controller(config) or os.environ.get("ML_TESTBED_KEEP") == "1":
        return
    stack = _stack()
    if not config.stash.get(_WAS_RUNNING, True) and stack.state.exists():
        stack.down()
        _lock_path(stack).unlink(missing_ok=True)


def _lock_path(stack: Stack) -> Path:
    # Beside the state folder, not in it: the lock is taken before the state exists.
    return stack.state.parent / f"{stack.state.name}.up.lock"


@pytest.fixture(scope="session")
def running_stack() -> RunningStack:
    """The running stack, brought up once for all workers."""
    try:
        ensure_docker()
    except NoContainerEngine as error:
        unavailable("stack", f"no container engine can be had here: {error}")
    stack = _stack()
    private_dir(stack.state.parent)
    with FileLock(_lock_path(stack), timeout=_UP_LOCK_TIMEOUT_SECONDS):
        return stack.up()
