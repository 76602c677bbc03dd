"""One user's ``down`` never takes the stack from another; bring-ups happen one at a time."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from harness import paths
from harness import stack as stack_module
from harness.stack import Stack, StackConfig, StackInUse


@pytest.fixture
def removed(tmp_path, monkeypatch):
    """What ``down`` took away (recorded instead of done)."""
    monkeypatch.setenv(paths.STATE_ENV, str(tmp_path / "state"))
    taken: list[str] = []
    monkeypatch.setattr(stack_module.airflow_server, "stop", lambda state: taken.append("airflow"))
    monkeypatch.setattr(stack_module.proxies, "down", lambda state: taken.append("proxies"))
    monkeypatch.setattr(stack_module.services, "down", lambda name: taken.append("services"))
    monkeypatch.setattr(stack_module.cluster, "down", lambda *a: taken.append("cluster"))
    return taken


def _stack() -> Stack:
    return Stack(StackConfig("lease-test"))


def test_down_is_refused_while_another_user_holds_the_lease(removed):
    replaying = _stack()
    replaying.hold()
    with pytest.raises(StackInUse, match="stack lease-test is in use by another process"):
        _stack().down(wait_seconds=0.5)
    assert removed == []
    replaying.release()
    _stack().down(wait_seconds=0.5)
    assert removed == ["airflow", "proxies", "services", "cluster"]


def test_the_holder_itself_may_take_the_stack_down(removed):
    session = _stack()
    session.hold()
    session.down(wait_seconds=0.5)
    assert removed[-1] == "cluster"


def test_force_removes_it_regardless(removed):
    _stack().hold()
    _stack().down(force=True, wait_seconds=0)
    assert removed[-1] == "cluster"


def test_a_killed_users_lease_goes_with_its_process(removed, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom harness.stack import Stack, StackConfig\n"
         "leased = Stack(StackConfig('lease-test'))\nleased.hold()\n"
         "print('held', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(StackInUse):
        _stack().down(wait_seconds=0.5)
    holder.kill()
    holder.wait()
    _stack().down(wait_seconds=5)
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


def test_down_waits_for_a_bring_up_in_progress(removed, monkeypatch):
    started = threading.Event()

    def slow_up(self):
        started.set()
        time.sleep(1)
        removed.append("up done")

    monkeypatch.setattr(Stack, "_up", slow_up)
    up = threading.Thread(target=_stack().up)
    up.start()
    started.wait(5)
    _stack().down(wait_seconds=5)
    up.join(5)
    assert removed[0] == "up done"
