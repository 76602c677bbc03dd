"""The node_lost fault without a cluster: its scenario field, the disruption's timing, the lock
that makes it run alone, and the providers that refuse it; and the eviction beside it.

The node, its Ready condition and the provider are fakes here; the scenario ``node_lost`` takes
a real node away (tests/scenarios).
"""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from harness import processes, runs
from harness.cluster.config import ClusterConfig
from harness.cluster.existing import ExistingClusterProvider
from harness.cluster.provider import NodeLossUnsupported
from harness.scenarios import disruptions
from harness.scenarios.disruptions import Evictions, NodeLosses
from harness.scenarios.model import ScenarioError, parse_scenario
from harness.scenarios.pods import PodRecord

TRIAL = "hyperparameter_tuning.train_trial"


def _scenario(fault: str) -> str:
    return (
        "name: x\ndescription: x\nrequires: [owned_cluster]\nlogical_date: 2026-11-01\n"
        "trials: [{}]\n"
        f"faults: {{trials: [{fault}]}}\nexpect: {{run_state: success}}\n"
    )


def test_a_node_lost_fault_takes_seconds_and_makes_the_scenario_run_alone():
    scenario = parse_scenario(_scenario("{trial: 0, fault: node_lost, seconds: 30}"), "x.yaml")
    assert scenario.faults.trials[0].seconds == 30
    assert scenario.faults.take_a_node_down
    evicted = parse_scenario(_scenario("{trial: 0, fault: evicted}"), "x.yaml")
    assert not evicted.faults.take_a_node_down


def test_seconds_on_another_fault_is_an_error_naming_the_field():
    with pytest.raises(ScenarioError, match=r"(?s)x\.yaml.*only node_lost and gpu_unhealthy"):
        parse_scenario(_scenario("{trial: 0, fault: oom, seconds: 30}"), "x.yaml")


class _Recorder:
    """The run's pods: one trial pod, running (or not) on ``node``."""

    def __init__(self, running: bool = True, node: str | None = "gpu-node") -> None:
        now = datetime.now(UTC)
        self.record = PodRecord("pod-1", "ns", TRIAL, 0, 1, 1, node=node, created=now)
        if running:
            self.record.started = now

    def records(self) -> list[PodRecord]:
        return [self.record]


class _Node:
    """A node whose Ready condition goes False ``not_ready_after`` s after it is stopped."""

    def __init__(self, not_ready_after: float | None = 0.0, refuse: bool = False) -> None:
        self.not_ready_after, self.refuse = not_ready_after, refuse
        self.stopped_at: float | None = None
        self.calls: list[str] = []

    def stop_node(self, node: str) -> None:
        if self.refuse:
            raise NodeLossUnsupported("not ours")
        self.calls.append(f"stop {node}")
        self.stopped_at = time.monotonic()

    def start_node(self, node: str) -> None:
        self.calls.append(f"start {node}")
        self.stopped_at = None

    def ready(self) -> bool:
        if self.stopped_at is None or self.not_ready_after is None:
            return True
        return time.monotonic() - self.stopped_at < self.not_ready_after


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(disruptions, "_POLL_SECONDS", 0.01)
    monkeypatch.setattr(disruptions, "_ACT_AFTER_RUNNING_SECONDS", 0.01)
    monkeypatch.setattr(disruptions, "_NOT_READY_WITHIN_SECONDS", 0.5)


def _losses(node: _Node, recorder: _Recorder, seconds: float, monkeypatch) -> NodeLosses:
    monkeypatch.setattr(disruptions, "node_ready", lambda api, name: node.ready())
    return NodeLosses(None, recorder, {f"{TRIAL}[0]": seconds}, node)


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_node_comes_back_after_it_was_seen_not_ready_and_its_seconds_passed(fast, monkeypatch):
    node = _Node(not_ready_after=0.05)
    with _losses(node, _Recorder(), 0.3, monkeypatch) as losses:
        _wait_for(lambda: node.calls == ["stop gpu-node", "start gpu-node"])
    assert losses.errors == []
    [loss] = losses.lost
    assert loss["node"] == "gpu-node" and loss["task"] == f"{TRIAL}[0]"
    assert loss["not_ready_after"] is not None and loss["back_after"] >= 0.3


def test_a_node_never_seen_not_ready_is_an_error_and_still_comes_back(fast, monkeypatch):
    node = _Node(not_ready_after=None)
    with _losses(node, _Recorder(), 0.1, monkeypatch) as losses:
        _wait_for(lambda: "start gpu-node" in node.calls)
    assert node.calls == ["stop gpu-node", "start gpu-node"]
    assert "still Ready" in losses.errors[0]


def test_the_end_of_the_block_brings_the_node_back_early(fast, monkeypatch):
    node = _Node(not_ready_after=0.0)
    with _losses(node, _Recorder(), 600, monkeypatch) as losses:
        _wait_for(lambda: node.calls == ["stop gpu-node"])
    assert node.calls == ["stop gpu-node", "start gpu-node"]
    assert losses.lost[0]["back_after"] < 600


def test_a_provider_that_refuses_and_a_pod_that_never_ran_are_errors(fast, monkeypatch):
    refusing = _Node(refuse=True)
    with _losses(refusing, _Recorder(), 1, monkeypatch) as losses:
        _wait_for(lambda: losses.errors)
    assert "could not take node gpu-node away: not ours" in losses.errors[0]
    idle = _Node()
    with _losses(idle, _Recorder(running=False), 1, monkeypatch) as losses:
        pass
    assert idle.calls == []
    assert losses.errors == [f"{TRIAL}[0]: its first pod never ran, so its node was not taken away"]


def test_a_replay_alone_waits_for_the_shared_ones_and_they_for_it(tmp_path):
    home = tmp_path / "airflow"
    events: list[str] = []
    shared_in, release_shared = threading.Event(), threading.Event()

    def shared() -> None:
        with runs.cluster_share(home, alone=False, show=events.append):
            shared_in.set()
            release_shared.wait(5)
            events.append("shared ends")

    def alone() -> None:
        with runs.cluster_share(home, alone=True, show=events.append):
            events.append("alone runs")

    first = threading.Thread(target=shared)
    first.start()
    shared_in.wait(5)
    second = threading.Thread(target=alone)
    second.start()
    time.sleep(0.3)
    assert "alone runs" not in events
    release_shared.set()
    first.join(5)
    second.join(5)
    assert events[-2:] == ["shared ends", "alone runs"]


def test_two_shared_replays_run_together(tmp_path):
    home = tmp_path / "airflow"
    with runs.cluster_share(home, alone=False, show=print):
        inner = threading.Thread(
            target=lambda: runs.cluster_share(home, alone=False, show=print).__enter__()
        )
        inner.start()
        inner.join(2)
        assert not inner.is_alive()


def test_an_existing_cluster_never_loses_a_node(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\n")
    provider = ExistingClusterProvider(ClusterConfig(), kubeconfig)
    with pytest.raises(NodeLossUnsupported, match=r"never disrupts.*local-up or kind"):
        provider.stop_node("gpu-1")


def test_kill_ends_a_process_at_once_and_forgets_it(tmp_path: Path):
    state = tmp_path / "state"
    pid = processes.start("sleeper", ["sh", "-c", "trap '' TERM; sleep 60"], state=state)
    processes.kill(state, "sleeper")
    assert processes.running_pid(state, "sleeper") is None
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


class _EvictionApi:
    """The Eviction API of a 1.20 cluster: policy/v1 is not served, v1beta1 is."""

    def __init__(self) -> None:
        self.evictions: list[tuple[str, str]] = []

    def create_namespaced_pod_eviction(self, name: str, namespace: str, body: dict) -> None:
        if body["apiVersion"] == "policy/v1":
            raise ApiException(status=404, reason="Not Found")
        self.evictions.append((name, body["apiVersion"]))


def test_an_eviction_goes_to_the_first_running_pod_through_the_api_the_cluster_serves(fast):
    api = _EvictionApi()
    with Evictions(api, _Recorder(), [f"{TRIAL}[0]"]) as evictions:
        _wait_for(lambda: evictions.evicted)
    assert api.evictions == [("pod-1", "policy/v1beta1")]
    assert evictions.errors == []
    with Evictions(api, _Recorder(running=False), [f"{TRIAL}[0]"]) as idle:
        pass
    assert idle.errors == [f"{TRIAL}[0]: its first pod never ran, so it was not evicted"]
