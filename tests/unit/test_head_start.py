"""The images built beside the cluster's creation: a process group that never outlives its use."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import head_start
from harness.cluster.config import ClusterConfig


def _alive(pid: int) -> bool:
    # A zombie counts as gone: this machine's PID 1 reaps no orphans.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(check, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_a_failing_body_stops_the_whole_group_it_ran_beside(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    command = ["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"]
    log = tmp_path / "beside.log"
    with pytest.raises(KeyboardInterrupt), head_start.running_beside(command, log):
        assert _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
        raise KeyboardInterrupt
    grandchild = int(pid_file.read_text())
    assert _wait_for(lambda: not _alive(grandchild)), "the build's own child outlived Ctrl-C"


def test_the_body_waits_for_the_command_and_gets_its_exit_code(tmp_path):
    log = tmp_path / "beside.log"
    with head_start.running_beside(["sh", "-c", "sleep 0.5; echo built; exit 3"], log) as done:
        assert done() == 3
    assert log.read_text() == "built\n"


def test_the_builds_stop_when_the_harness_that_started_them_is_killed(tmp_path):
    pid_file, watching = tmp_path / "builder.pid", tmp_path / "watching"
    builder = (
        "import sys, time; from harness.head_start import stop_when_orphaned; "
        f"stop_when_orphaned(int(sys.argv[1])); open({str(watching)!r}, 'w').close(); "
        "time.sleep(120)"
    )
    # The middle process plays the harness: it starts the builder, waits until the builder
    # watches it, then dies without a word.
    middle = (
        "import os, subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {builder!r}, str(os.getpid())], "
        "start_new_session=True); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); "
        f"deadline = time.monotonic() + 20\n"
        f"while not os.path.exists({str(watching)!r}) and time.monotonic() < deadline: "
        "time.sleep(0.05)\n"
        "os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", middle], check=True, timeout=30)
    builder_pid = int(pid_file.read_text())
    assert _wait_for(watching.exists), "the builder never started watching its parent"
    assert _wait_for(lambda: not _alive(builder_pid)), "the builds outlived the harness"


def test_what_ignores_sigterm_in_the_group_is_killed_once_the_leader_is_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(head_start, "STOP_TIMEOUT_S", 2)
    pid_file = tmp_path / "straggler.pid"
    # The leader dies on SIGTERM; its child ignores it, as a dpkg or a hung client might.
    command = ["sh", "-c", f"(trap '' TERM; exec sleep 300) & echo $! > {pid_file}; wait"]
    with pytest.raises(RuntimeError), head_start.running_beside(command, tmp_path / "b.log"):
        assert _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
        raise RuntimeError("the cluster's creation failed")
    straggler = int(pid_file.read_text())
    assert _wait_for(lambda: not _alive(straggler), timeout=5), "a straggler outlived the stop"


def test_nothing_is_built_beside_a_provider_that_cannot_work(monkeypatch):
    from harness import cluster

    entered = []

    def choose(config, requested, kubeconfig=None):
        raise cluster.ProviderUnavailable("kind cannot work here")

    monkeypatch.setattr(cluster, "_remembered", lambda config: None)
    monkeypatch.setattr(cluster, "choose_provider", choose)
    with pytest.raises(cluster.ProviderUnavailable):
        cluster.up(ClusterConfig(name="t4"), "kind", beside_creation=lambda: entered.append(1))
    assert entered == []
