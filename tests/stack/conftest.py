"""One stack for the session (cluster, services, Airflow), made by the harness library."""

from __future__ import annotations

import os

import pytest

from harness.cluster.engine import NoContainerEngine, ensure_docker
from harness.stack import RunningStack, Stack, StackConfig
from tests.requirements import unavailable


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The stack object; ML_TESTBED_KEEP=1 leaves it running after the tests."""
    try:
        ensure_docker()
    except NoContainerEngine as error:
        unavailable("stack", f"no container engine can be had here: {error}")
    stack = Stack(StackConfig(), keep=os.environ.get("ML_TESTBED_KEEP") == "1")
    # Leased for the session: another process's `down` leaves the stack to these tests.
    stack.hold()
    return stack


@pytest.fixture(scope="session")
def running(stack: Stack) -> RunningStack:
    """The running stack (reused when it already runs)."""
    return stack.up()
