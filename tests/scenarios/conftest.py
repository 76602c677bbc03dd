"""One stack for the whole test session, shared by every pytest-xdist worker.

The first worker brings the stack up (or finds it running: ``Stack.up`` lets one process at a
time bring it up); the others reuse it. The controller (the only process without
``workerinput``) holds a lease on the stack for the session and takes it down at the end, unless
it was already running when the session started, ML_TESTBED_KEEP=1, or another process (another
pytest session, a ``harness replay``) holds a lease on it then.
"""

from __future__ import annotations

import os

import pytest

from harness.cluster.engine import NoContainerEngine, ensure_docker
from harness.stack import RunningStack, Stack, StackConfig, StackInUse
from harness.steps import say
from tests.requirements import unavailable

_WAS_RUNNING = pytest.StashKey[bool]()
_STACK = pytest.StashKey[Stack]()


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    if _is_controller(session.config):
        stack = Stack(StackConfig(), keep=True)
        stack.hold()
        session.config.stash[_STACK] = stack
        session.config.stash[_WAS_RUNNING] = stack.is_running()


# After xdist's own sessionfinish, which ends the workers.
@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if not _is_controller(config):
        return
    stack = config.stash.get(_STACK, None)
    if stack is None:  # this conftest was loaded after the session started: nothing to end
        return
    if os.environ.get("ML_TESTBED_KEEP") == "1" or config.stash.get(_WAS_RUNNING, True):
        stack.release()
        return
    if stack.state.exists():
        try:
            stack.down()
        except StackInUse as in_use:
            say(str(in_use))
    stack.release()


@pytest.fixture(scope="session")
def running_stack() -> RunningStack:
    """The running stack, brought up once for all workers."""
    try:
        ensure_docker()
    except NoContainerEngine as error:
        unavailable("stack", f"no container engine can be had here: {error}")
    return Stack(StackConfig(), keep=True).up()
