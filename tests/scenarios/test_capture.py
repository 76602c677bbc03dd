"""A captured run replays to the same end: the round trip of ``python -m harness capture``.

A scenario with faults is replayed; its run is captured from the stack's Airflow, cluster and
MLflow over their APIs, with the command an operator runs against production; the captured
file is replayed. Both runs must end alike: the same task states, branch and champion moves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import build_parser
from harness.scenarios import ScenarioSkipped, load_scenario, replay
from harness.scenarios.model import SCENARIOS_DIR
from harness.scenarios.outcome import Outcome
from harness.stack import RunningStack

ROUND_TRIPS = ("failed_trials", "late_data", "trial_evicted", "mlflow_down")


def _capture(running: RunningStack, run_id: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    from harness.capture import command

    monkeypatch.setenv(command.USER_ENV, running.airflow.user)
    monkeypatch.setenv(command.PASSWORD_ENV, running.airflow.password)
    argv = [
        "capture",
        "--airflow",
        running.airflow.api_url,
        "--run-id",
        run_id,
        "--kubeconfig",
        str(running.cluster.info.admin_kubeconfig),
        "--mlflow",
        running.services.mlflow_uri,
        "--out",
        str(out),
        "--evidence",
        str(out.with_suffix(".evidence.json")),
    ]
    for namespace in running.cluster.airflow.namespaces:
        argv += ["--namespace", namespace]
    return command.main(build_parser().parse_args(argv))


def _end(outcome: Outcome) -> dict[str, object]:
    """What a run ended with, as the round trip compares it."""
    return {
        "run_state": outcome.run_state,
        "tasks": outcome.tasks,
        "branch": outcome.branch,
        "champion": (
            outcome.champion_label(outcome.champion_before),
            outcome.champion_label(outcome.champion_after),
        ),
    }


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_a_captured_run_replays_to_the_same_end(
    name: str, running_stack: RunningStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        first = replay(running_stack, load_scenario(SCENARIOS_DIR / f"{name}.yaml"))
    except ScenarioSkipped as reason:
        pytest.skip(str(reason))
    assert first.passed, f"the scenario to capture did not pass: {first.failure_message()}"
    out = tmp_path / f"captured_{name}.yaml"
    assert _capture(running_stack, first.run_id, out, monkeypatch) == 0
    text = out.read_text()
    assert "NOT MAPPED" not in text, f"the capture left evidence unmapped:\n{text}"
    assert running_stack.airflow.password not in text
    assert out.with_suffix(".evidence.json").stat().st_mode & 0o077 == 0
    again = replay(running_stack, load_scenario(out))
    assert again.passed, f"the captured scenario:\n{text}\n{again.failure_message()}"
    assert first.outcome is not None and again.outcome is not None
    assert _end(again.outcome) == _end(first.outcome)
