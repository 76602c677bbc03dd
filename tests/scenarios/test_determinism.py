"""The same scenario replayed twice gives identical trial metrics and the same decision (CPU).

What makes it so: seeded data, a seeded split, seeded weights and batches, deterministic torch
kernels and one intra-op thread in every trial pod (trainer.device).
"""

from __future__ import annotations

from harness.scenarios import load_scenario, replay
from harness.scenarios.model import SCENARIOS_DIR
from harness.stack import RunningStack


def test_happy_path_twice_gives_identical_trial_metrics(running_stack: RunningStack) -> None:
    scenario = load_scenario(SCENARIOS_DIR / "happy_path.yaml")
    first, second = replay(running_stack, scenario), replay(running_stack, scenario)
    for result in (first, second):
        assert result.passed, result.failure_message()
    assert first.outcome and second.outcome
    for result in (first, second):
        # A trial missing here: its run's status is in trial_runs (and in the outcome report).
        assert len(result.outcome.trial_metrics) == 2, result.outcome.trial_runs
    # Exact equality: every logged float, not a tolerance.
    assert first.outcome.trial_metrics == second.outcome.trial_metrics
    assert (first.outcome.branch, first.outcome.best_trial) == (
        second.outcome.branch,
        second.outcome.best_trial,
    )
