"""One user's ``down`` never takes the stack from another; bring-ups happen one at a time.

The other users are other processes, as they are for real (another pytest session, a
``harness replay``): within one process every use shares the process's one lease.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from harness import cluster, paths
from harness import stack as stack_module
from harness.locks import Lease, LeaseInUse
from harness.stack import Stack, StackConfig, StackInUse

HOLDER = (
    "import sys, time\nfrom harness.stack import Stack, StackConfig\n"
    "leased = Stack(StackConfig('lease-test'))\nleased.hold()\n"
    "print('held', flush=True)\ntime.sleep(60)\n"
)


@pytest.fixture
def removed(tmp_path, monkeypatch):
    """What ``down`` took away (recorded instead of done)."""
    monkeypatch.setenv(paths.STATE_ENV, str(tmp_path / "state"))
    taken: list[str] = []
    monkeypatch.setattr(stack_module.airflow_server, "stop", lambda state: taken.append("airflow"))
    monkeypatch.setattr(stack_module.proxies, "down", lambda state: taken.append("proxies"))
    monkeypatch.setattr(stack_module.services, "down", lambda name: taken.append("services"))
    monkeypatch.setattr(cluster, "choose_provider", lambda *a: (_Provider(taken), "test"))
    monkeypatch.setattr(cluster, "_sweep_scratch", lambda: None)
    return taken


class _Provider:
    name = "test"

    def __init__(self, taken: list[str]) -> None:
        self.taken = taken

    def delete(self) -> None:
        self.taken.append("cluster")


@pytest.fixture
def other_user():
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield holder
    holder.kill()
    holder.wait()


def _stack() -> Stack:
    return Stack(StackConfig("lease-test"))


def test_down_is_refused_while_another_process_holds_the_lease(removed, other_user):
    with pytest.raises(StackInUse, match="stack lease-test is in use by another process"):
        _stack().down(wait_seconds=0.5)
    assert removed == []


def test_cluster_down_is_refused_too_while_a_stack_on_it_is_in_use(removed, other_user):
    from harness.cluster.config import ClusterConfig

    with pytest.raises(LeaseInUse, match="cluster lease-test is in use"):
        cluster.down(ClusterConfig(name="lease-test"), wait_seconds=0.5)
    assert removed == []


def test_a_killed_users_lease_goes_with_its_process(removed, other_user):
    other_user.kill()
    other_user.wait()
    _stack().down(wait_seconds=5)
    assert removed == ["airflow", "proxies", "services", "cluster"]


def test_the_holder_itself_may_take_the_stack_down(removed):
    session = _stack()
    session.hold()
    session.down(wait_seconds=0.5)
    assert removed[-1] == "cluster"
    # Down gave the lease back: another process could now have it alone.
    assert Lease.of(session.lease.path)._holds == 0


def test_force_removes_it_regardless(removed, other_user):
    _stack().down(force=True, wait_seconds=0)
    assert removed[-1] == "cluster"


def test_bring_ups_happen_one_at_a_time(removed, monkeypatch):
    inside, overlaps = [], []

    def slow_up(self):
        inside.append(1)
        overlaps.append(len(inside))
        time.sleep(0.3)
        inside.pop()
        return "running"

    monkeypatch.setattr(Stack, "_up", slow_up)
    ups = [threading.Thread(target=_stack().up) for _ in range(3)]
    for up in ups:
        up.start()
    for up in ups:
        up.join(10)
    assert overlaps == [1, 1, 1]
