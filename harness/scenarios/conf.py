"""What isolates one replay from every other, and the ``dag_run.conf`` each of its runs gets.

Ids (run id, model and experiment name, data prefix, logical date) are the replay's own, so
scenarios run side by side; the conf carries them, the scenario's settings and its trials with
their faults applied.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from harness.pipeline_settings import MISSING_IMAGE
from harness.scenarios.model import RunStep, Scenario
from ml_pipeline.settings import PipelineSettings

# What makes a trial fail for real (see TrialFault): merged over the trial's hyperparameters.
FAULT_TRIAL_CHANGES: dict[str, dict[str, Any]] = {
    # SGD with this step overflows float32 within the first batches: the loss is NaN.
    "diverge": {"optimizer": "sgd", "learning_rate": 1.0e12},
    # One 24576-wide hidden layer is 2.4 GB of float32 weights, past the trial's memory limit.
    "oom": {"hidden_width": 24576, "depth": 2},
    # The trainer rejects an unknown optimizer: the container exits 2 at once.
    "crash": {"optimizer": "injected-crash"},
    # More GPUs than any node has: the trial's operator fails it before making a pod (a pod
    # would stay Pending, "Insufficient nvidia.com/gpu", until the schedule timeout).
    "unschedulable": {"gpus": 64},
    # An image no node has; with the test clusters' pull policy Never it cannot start at all.
    "missing_image": {"image": MISSING_IMAGE},
    # The packaged model expects complete rows (no imputation): it scores today's complete rows
    # as any other, and the deploy's canary (rows with a missing feature) refuses it.
    "unservable": {"impute_missing": False},
    # Trains long enough (some seconds) to be evicted in the middle (see disruptions.Evictions).
    "evicted": {"epochs": 60},
    # The same, for its node to be taken away in the middle (see disruptions.NodeLosses).
    "node_lost": {"epochs": 60},
    # The same, for its GPU to fail in the middle (see disruptions.GpuFailures).
    "gpu_unhealthy": {"epochs": 60},
}


@dataclass(frozen=True)
class ScenarioIds:
    """What isolates one replay from every other: run id, model, experiment, data prefix."""

    name: str
    suffix: str

    @classmethod
    def new(cls, name: str) -> ScenarioIds:
        """Fresh ids for one replay of scenario ``name``."""
        return cls(name, uuid.uuid4().hex[:8])

    @property
    def run_id(self) -> str:
        """The first DAG run's id; also a valid pod label value (at most 63 characters)."""
        return self.run_id_of(0)

    def run_id_of(self, index: int) -> str:
        """The id of the replay's run number ``index`` (0: the first)."""
        base = f"scenario__{self.name}__{self.suffix}"
        return base if index == 0 else f"{base}_{index}"

    @property
    def model_name(self) -> str:
        """The registered model (and MLflow experiment) of this replay."""
        return f"scenario-{self.name}-{self.suffix}"

    def logical_date(self, day: date, index: int = 0) -> datetime:
        """A moment of ``day`` of this replay's own (its run number ``index``).

        Airflow allows one run per DAG and logical date, so replays of a day differ in the time
        of day (from the suffix), and runs of one replay by a second each; ``{{ ds }}``, and so
        the data's path, is the day's.
        """
        offset = timedelta(microseconds=int(self.suffix, 16) % (80_000 * 10**6))
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        return start + offset + timedelta(seconds=index)

    @property
    def data_prefix(self) -> str:
        """Where the first run's features land in the data bucket."""
        return self.data_prefix_of(0, "run")

    def data_prefix_of(self, index: int, run_name: str) -> str:
        """Where the features of run number ``index`` land (each run has its own day's file)."""
        base = f"scenarios/{self.name}-{self.suffix}"
        return f"{base}/daily" if index == 0 else f"{base}/{run_name}/daily"


def trials_for(
    scenario: Scenario, profile: dict[str, Any], run: RunStep | None = None
) -> list[dict[str, Any]] | None:
    """The explicit trial list the run gets, faults applied; None keeps the profile's grid."""
    run = run or scenario.runs()[0]
    explicit, faults = scenario.run_trials(run), scenario.run_faults(run)
    if not explicit and not faults.trials:
        return None
    settings = PipelineSettings(**{**profile, "trials": explicit})
    trials = settings.trial_hyperparameters()
    for fault in faults.trials:
        if fault.trial >= len(trials):
            raise ValueError(
                f"scenario {scenario.name}: faults.trials names trial {fault.trial}, but the "
                f"profile's grid has {len(trials)} trial(s); list the trials in `trials`"
            )
        trials[fault.trial] = {**trials[fault.trial], **FAULT_TRIAL_CHANGES[fault.fault]}
    return trials


def run_conf(
    scenario: Scenario,
    ids: ScenarioIds,
    profile: dict[str, Any],
    run: RunStep | None = None,
    index: int = 0,
) -> dict[str, Any]:
    """The run's dag_run.conf: its isolation ids, the scenario's settings and trials.

    Every run of one replay trains the same model (the same name and experiment); each has its
    own data prefix.
    """
    run = run or scenario.runs()[0]
    conf: dict[str, Any] = {
        "data_prefix": ids.data_prefix_of(index, run.run),
        "model_name": ids.model_name,
        "experiment_name": ids.model_name,
        **scenario.run_settings(run),
    }
    trials = trials_for(scenario, profile, run)
    if trials is not None:
        conf["trials"] = trials
    return conf
