"""``python -m harness replay -j N``: N replays at once on one stack, in the scenarios' order.

The replay itself is faked (the boundary): each fake records when it ran, so the schedule is
what is checked: how many ran at once, that one changing the cluster ran alone, the results'
order, and that Ctrl-C stops every replay and waits for each to end.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from harness.cli import build_parser
from harness.replay import replay_scenarios
from harness.scenarios import ScenarioResult
from harness.scenarios.model import parse_scenario

PLAIN = "name: {name}\ndescription: d\nlogical_date: 2026-11-01\nexpect: {{run_state: success}}\n"
ALONE = PLAIN + "cluster: {{gpu_capacity: 2}}\nrequires: [owned_cluster]\n"


def scenario(name: str, alone: bool = False):
    return parse_scenario((ALONE if alone else PLAIN).format(name=name), name)


class FakeReplays:
    """Replays that take ``seconds`` each and record who ran beside whom."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds
        self.running: set[str] = set()
        self.beside: dict[str, set[str]] = {}
        self.cancelled: list[str] = []
        self.started: list[str] = []
        self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, scenario, cancelled: threading.Event) -> ScenarioResult | None:
        name = scenario.name
        with self.lock:
            self.started.append(name)
            self.beside[name] = set(self.running)
            for other in self.running:
                self.beside[other].add(name)
            self.running.add(name)
            self.peak = max(self.peak, len(self.running))
        try:
            if cancelled.wait(self.seconds):
                self.cancelled.append(name)
            return (
                None
                if name.startswith("skipped")
                else ScenarioResult(
                    scenario, f"run-{name}", None, [], self.seconds, Path("/nonexistent")
                )
            )
        finally:
            with self.lock:
                self.running.discard(name)


def test_two_at_once_in_the_scenarios_order_and_one_that_changes_the_cluster_alone():
    scenarios = [scenario("a"), scenario("lost", alone=True), scenario("b"), scenario("c")]
    replays = FakeReplays()
    started = time.monotonic()
    results = replay_scenarios(scenarios, replays, jobs=2)
    assert [r.scenario.name for r in results] == ["a", "lost", "b", "c"]
    assert replays.beside["lost"] == set()
    assert replays.peak == 2
    # a, b, c two at a time (two rounds), then lost: four rounds, not five.
    assert time.monotonic() - started < 4.5 * replays.seconds


def test_one_job_replays_one_after_another_and_a_skipped_one_is_left_out():
    scenarios = [scenario("a"), scenario("skipped_one"), scenario("b")]
    replays = FakeReplays(seconds=0.05)
    results = replay_scenarios(scenarios, replays, jobs=1)
    assert [r.scenario.name for r in results] == ["a", "b"]
    assert replays.peak == 1
    assert replays.started == ["a", "skipped_one", "b"]


def test_ctrl_c_stops_every_replay_and_waits_for_them():
    # Ctrl-C reaches the main thread while it waits for a result; the first replay's result
    # raising KeyboardInterrupt is that moment (a real SIGINT was tried by hand: see the note).
    scenarios = [scenario(name) for name in ("a", "b", "c", "d")]
    replays = FakeReplays(seconds=30)

    def play(scenario, cancelled):
        if scenario.name == "a":
            time.sleep(0.3)
            raise KeyboardInterrupt
        return replays(scenario, cancelled)

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        replay_scenarios(scenarios, play, jobs=2)
    assert time.monotonic() - started < 10
    # b was running; c may have begun in a's thread before the main thread knew; d never.
    assert "b" in replays.started and "d" not in replays.started
    assert sorted(replays.cancelled) == sorted(replays.started)
    assert replays.running == set()


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_jobs_must_be_a_whole_number_of_one_or_more(value: str, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", "-j", value])
    assert "1 or more" in capsys.readouterr().err
