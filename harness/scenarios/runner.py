"""Replays one scenario through a real DAG run on a running stack and checks what came of it.

Seeds S3 and the registry, triggers the run over the REST API with the scenario's own run id,
model name and data prefix (so scenarios can run side by side), watches its pods, waits with
progress, collects the outcome, compares it with the expectations and, on a mismatch, writes a
forensic bundle. The run's leftover pods are removed whatever happens.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from harness.airflow.client import AirflowApiError, AirflowClient
from harness.cluster import provider_of
from harness.cluster.gpu_capacity import allocatable, ensure_capacity
from harness.pipeline_settings import PIPELINE, REPO_ROOT
from harness.scenarios import forensics, orphans, seeding
from harness.scenarios.disruptions import Evictions, NodeLosses, ServiceOutages
from harness.scenarios.model import Scenario
from harness.scenarios.outcome import Outcome, compare, sensor_pokes, task_key
from harness.scenarios.pods import PodRecord, PodRecorder
from harness.stack import PIPELINE_DAG_ID, RunningStack
from harness.steps import say
from ml_pipeline import registry
from ml_pipeline.notification import notification_key
from ml_pipeline.settings import PipelineSettings
from ml_pipeline.task_ids import SENSOR_TASK_ID, TRIAL_TASK_ID

TRIAL_RUN_READS = 3
TRIAL_RUN_READ_PAUSE_S = 5.0

REPORTS_DIR = REPO_ROOT / "reports" / "scenarios"
# What makes a trial fail for real (see TrialFault): merged over the trial's hyperparameters.
FAULT_TRIAL_CHANGES: dict[str, dict[str, Any]] = {
    # SGD with this step overflows float32 within the first batches: the loss is NaN.
    "diverge": {"optimizer": "sgd", "learning_rate": 1.0e12},
    # One 24576-wide hidden layer is 2.4 GB of float32 weights, past the trial's memory limit.
    "oom": {"hidden_width": 24576, "depth": 2},
    # The trainer rejects an unknown optimizer: the container exits 2 at once.
    "crash": {"optimizer": "injected-crash"},
    # More GPUs than any node has: the pod stays Pending ("Insufficient nvidia.com/gpu") until
    # the pipeline's pod startup timeout fails the task.
    "unschedulable": {"gpus": 64},
    # An image no node has; with the test clusters' pull policy Never it cannot start at all.
    "missing_image": {"image": "ml-testbed/trainer:missing-image-fault"},
    # Trains long enough (some seconds) to be evicted in the middle (see disruptions.Evictions).
    "evicted": {"epochs": 60},
    # The same, for its node to be taken away in the middle (see disruptions.NodeLosses).
    "node_lost": {"epochs": 60},
}
# How long a lost node stays away when the fault does not say (past the NotReady mark).
NODE_LOST_SECONDS = 45.0


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
        """The DAG run id; also a valid pod label value (at most 63 characters)."""
        return f"scenario__{self.name}__{self.suffix}"

    @property
    def model_name(self) -> str:
        """The registered model (and MLflow experiment) of this replay."""
        return f"scenario-{self.name}-{self.suffix}"

    def logical_date(self, day: date) -> datetime:
        """A moment of ``day`` of this replay's own.

        Airflow allows one run per DAG and logical date, so replays of a day differ in the time
        of day (from the suffix); ``{{ ds }}``, and so the data's path, is the day's.
        """
        offset = timedelta(microseconds=int(self.suffix, 16) % (86_400 * 10**6))
        return datetime.combine(day, datetime.min.time(), tzinfo=UTC) + offset

    @property
    def data_prefix(self) -> str:
        """Where this replay's features land in the data bucket."""
        return f"scenarios/{self.name}-{self.suffix}/daily"


@dataclass
class ScenarioResult:
    """A replayed scenario: what it expected, what happened, and where the evidence is."""

    scenario: Scenario
    run_id: str
    outcome: Outcome | None
    mismatches: list[str]
    seconds: float
    report_dir: Path
    bundle: Path | None = None

    @property
    def passed(self) -> bool:
        """Whether everything matched."""
        return not self.mismatches

    def failure_message(self) -> str:
        """Every mismatch, and where the forensic bundle is."""
        lines = "\n".join(f"  - {m}" for m in self.mismatches)
        where = f"\nforensic bundle: {self.bundle}" if self.bundle else ""
        return f"scenario {self.scenario.name} (run {self.run_id}):\n{lines}{where}"


def trials_for(scenario: Scenario, profile: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The explicit trial list the run gets, faults applied; None keeps the profile's grid."""
    if not scenario.trials and not scenario.faults.trials:
        return None
    settings = PipelineSettings(**{**profile, "trials": scenario.trials})
    trials = settings.trial_hyperparameters()
    for fault in scenario.faults.trials:
        if fault.trial >= len(trials):
            raise ValueError(
                f"scenario {scenario.name}: faults.trials names trial {fault.trial}, but the "
                f"profile's grid has {len(trials)} trial(s); list the trials in `trials`"
            )
        trials[fault.trial] = {**trials[fault.trial], **FAULT_TRIAL_CHANGES[fault.fault]}
    return trials


def run_conf(scenario: Scenario, ids: ScenarioIds, profile: dict[str, Any]) -> dict[str, Any]:
    """The run's dag_run.conf: its isolation ids, the scenario's settings and trials."""
    conf: dict[str, Any] = {
        "data_prefix": ids.data_prefix,
        "model_name": ids.model_name,
        "experiment_name": ids.model_name,
        **scenario.settings,
    }
    trials = trials_for(scenario, profile)
    if trials is not None:
        conf["trials"] = trials
    return conf


def _core_api(running: RunningStack) -> k8s.CoreV1Api:
    config_file = str(running.cluster.info.admin_kubeconfig)
    return k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=config_file))


@contextmanager
def gpu_capacity(api: k8s.CoreV1Api, nodes: tuple[str, ...], wanted: int | None) -> Iterator[int]:
    """The GPU nodes' capacity while the scenario runs (``wanted``, restored afterwards)."""
    resource = PIPELINE.gpu_resource_name
    before = {node: allocatable(api, node, resource) for node in nodes}
    if wanted is None or all(count == wanted for count in before.values()):
        yield min(before.values(), default=0)
        return
    say(f"    GPU capacity {wanted} on {', '.join(nodes)} for this scenario (was {before})")
    ensure_capacity(api, nodes, resource, wanted)
    try:
        yield wanted
    finally:
        for node, count in before.items():
            ensure_capacity(api, [node], resource, count)


class _Progress:
    """Prints each task's state changes while the run goes, and notes a deferred sensor."""

    def __init__(self, name: str, started: float, show: Callable[[str], None]) -> None:
        self.name, self.started, self.show = name, started, show
        self.states: dict[str, str] = {}
        self.sensor_deferred = False
        self.listeners: list[Callable[[list[dict[str, Any]]], None]] = []

    def __call__(self, run: dict[str, Any], task_instances: list[dict[str, Any]]) -> None:
        for listener in self.listeners:
            listener(task_instances)
        for ti in task_instances:
            key, state = task_key(ti), ti.get("state") or "none"
            if key == SENSOR_TASK_ID and state == "deferred":
                self.sensor_deferred = True
            if self.states.get(key, "none") != state:
                self.states[key] = state
                self.show(
                    f"    [{self.name} {time.monotonic() - self.started:5.0f} s] {key}: {state}"
                )


def _candidate(client: Any, model_name: str, run_id: str) -> tuple[str | None, dict[str, str]]:
    """The version this run registered, and its tags."""
    for version in client.search_model_versions(f"name = '{model_name}'"):
        if version.tags.get("dag_run_id") == run_id:
            return str(version.version), dict(version.tags)
    return None, {}


def _trial_runs(client: Any, experiment_name: str) -> list[dict[str, str]]:
    """Every trial run of the experiment, any status (the seeded champion's left out).

    Kept in the outcome so that a trial missing from ``trial_metrics`` shows why: a run still
    RUNNING or FAILED, or no run at all.
    """
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return [
        {
            "trial_id": run.data.tags.get("trial_id", "?"),
            "run_id": run.info.run_id,
            "status": run.info.status,
            "metrics": dict(sorted(run.data.metrics.items())),
        }
        for run in runs
        if "seeded_by" not in run.data.tags
    ]


def _unrecorded_trials(tis: list[dict[str, Any]], trial_runs: list[dict[str, Any]]) -> list[str]:
    """The map indexes of trial tasks that succeeded without a FINISHED MLflow run."""
    finished = {run["trial_id"] for run in trial_runs if run["status"] == "FINISHED"}
    return [
        str(ti.get("map_index"))
        for ti in tis
        if ti["task_id"] == TRIAL_TASK_ID
        and ti.get("state") == "success"
        and str(ti.get("map_index")) not in finished
    ]


def _trial_metrics(trial_runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each trial's metrics from its finished MLflow run (the last one, for a retried trial)."""
    return {
        run["trial_id"]: run["metrics"]
        for run in trial_runs
        if run["status"] == "FINISHED" and run["trial_id"] != "?"
    }


def _notification(s3: Any, settings: PipelineSettings, run_id: str) -> dict[str, Any] | None:
    key = notification_key(settings.notifications_prefix, PIPELINE_DAG_ID, run_id)
    try:
        body = s3.get_object(Bucket=settings.artifacts_bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    return json.loads(body)


def _logs_of_every_try(
    airflow: AirflowClient, run_id: str, ti: dict[str, Any] | None
) -> list[str | None]:
    """The task instance's log of each try, in order; None for a try without one."""
    logs: list[str | None] = []
    for attempt in range(1, ((ti or {}).get("try_number") or 0) + 1):
        try:
            logs.append(
                airflow.task_log(
                    PIPELINE_DAG_ID, run_id, ti["task_id"], attempt, ti.get("map_index", -1)
                )
            )
        except AirflowApiError:
            # A try that never started has no log.
            logs.append(None)
    return logs


def _sensor_pokes(airflow: AirflowClient, run_id: str, tis: list[dict[str, Any]]) -> int:
    sensor = next((ti for ti in tis if ti["task_id"] == SENSOR_TASK_ID), None)
    # A try without a log poked nothing.
    return sum(sensor_pokes(log) for log in _logs_of_every_try(airflow, run_id, sensor) if log)


def _timeline_fields(ti: dict[str, Any]) -> dict[str, Any]:
    keys = ("task_id", "map_index", "state", "try_number", "start_date", "end_date", "duration")
    return {key: ti.get(key) for key in keys}


def replay(
    running: RunningStack,
    scenario: Scenario,
    reports_dir: Path = REPORTS_DIR,
    show: Callable[[str], None] = say,
) -> ScenarioResult:
    """Replays ``scenario`` on ``running`` and returns what matched and what did not."""
    replaying = _Replay(running, scenario, show)
    report_dir = reports_dir / replaying.ids.run_id
    report_dir.mkdir(parents=True, exist_ok=True)
    run_id = replaying.ids.run_id
    alone = scenario.faults.take_a_node_down
    with orphans.cluster_share(running.airflow.home, alone, show):
        try:
            with orphans.claimed(running.airflow.home, run_id):
                return _replayed(replaying, report_dir)
        finally:
            # A replay that ends early (Ctrl-C, an error) leaves no run going and no pod behind.
            namespaces = list(running.cluster.airflow.namespaces)
            orphans.end_run(replaying.airflow, replaying.api, PIPELINE_DAG_ID, namespaces, run_id)


def _replayed(replaying: _Replay, report_dir: Path) -> ScenarioResult:
    """The outcome compared with the expectations; a forensic bundle on any mismatch."""
    scenario, running, run_id = replaying.scenario, replaying.running, replaying.ids.run_id
    try:
        outcome: Outcome | None = replaying.outcome()
    except Exception as error:  # the scenario fails with the reason; the others go on
        outcome = None
        mismatches = [f"the replay failed before its outcome was collected: {error!r}"]
    else:
        mismatches = compare(scenario.expect, outcome)
        (report_dir / "outcome.json").write_text(
            json.dumps(outcome.as_json(), indent=2, default=str)
        )
    result = ScenarioResult(scenario, run_id, outcome, mismatches, replaying.elapsed(), report_dir)
    if mismatches:
        pods = [pod.name for pod in outcome.pods] if outcome else []
        result.bundle = forensics.write_bundle(
            report_dir, running, replaying.api, run_id, mismatches, pods
        )
    return result


class _Replay:
    """One replay's steps: seed the registry, run with data landing and pods watched, collect."""

    def __init__(
        self, running: RunningStack, scenario: Scenario, show: Callable[[str], None]
    ) -> None:
        self.started = time.monotonic()
        self.running, self.scenario, self.show = running, scenario, show
        self.ids = ScenarioIds.new(scenario.name)
        self.settings = PipelineSettings(**running.pipeline_settings)
        self.api = _core_api(running)
        self.s3 = seeding.s3_client(running.services.s3_endpoint)
        self.mlflow = registry.client_for(running.services.mlflow_uri)
        self.airflow = running.client()
        # What NodeLosses did: task, node, seconds until NotReady and until back.
        self.nodes_lost: list[dict[str, Any]] = []

    def elapsed(self) -> float:
        """Seconds since the replay began."""
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        """A progress line naming the scenario and the time so far."""
        self.show(f"    [{self.scenario.name} {self.elapsed():5.0f} s] {message}")

    def outcome(self) -> Outcome:
        """Runs the scenario and collects everything the expectations may ask about."""
        nodes = self.running.cluster.info.gpu_nodes
        with gpu_capacity(self.api, nodes, self.scenario.cluster.gpu_capacity) as capacity:
            seeded = self._seed_champion()
            champion_before = registry.champion_version(self.mlflow, self.ids.model_name)
            progress = _Progress(self.scenario.name, self.started, self.show)
            run_state, pods, problems = self._run(progress)
        run_id, model_name = self.ids.run_id, self.ids.model_name
        tis = self.airflow.task_instances(PIPELINE_DAG_ID, run_id)
        candidate, candidate_tags = _candidate(self.mlflow, model_name, run_id)
        trial_runs, reads = self._recorded_trial_runs(tis, problems)
        return Outcome(
            run_id=run_id,
            run_state=run_state,
            tasks={task_key(ti): ti.get("state") or "none" for ti in tis},
            task_instances=[_timeline_fields(ti) for ti in tis],
            pods=pods,
            gpu_nodes=nodes,
            gpu_capacity=capacity,
            seeded_champion=seeded,
            champion_before=champion_before,
            champion_after=registry.champion_version(self.mlflow, model_name),
            candidate_version=candidate,
            candidate_tags=candidate_tags,
            notification=_notification(self.s3, self.settings, run_id),
            sensor_deferred=progress.sensor_deferred,
            sensor_pokes=_sensor_pokes(self.airflow, run_id, tis),
            problems=problems,
            trial_metrics=_trial_metrics(trial_runs),
            trial_runs=[
                {key: run[key] for key in ("trial_id", "run_id", "status")} for run in trial_runs
            ],
            trial_run_reads=reads,
            nodes_lost=self.nodes_lost,
            task_logs=self._task_logs(tis),
        )

    def _recorded_trial_runs(
        self, tis: list[dict[str, Any]], problems: list[str]
    ) -> tuple[list[dict[str, Any]], int]:
        """The trial runs in MLflow, and how many reads it took to see every succeeded trial's.

        A trial task succeeds only after its trainer ended its MLflow run FINISHED, so one read
        should do. It is read up to 3 times, 5 s apart, to tell a late write from a lost one;
        a trial still without a finished run is a problem of the replay (with its bundle).
        """
        for read in range(1, TRIAL_RUN_READS + 1):
            trial_runs = _trial_runs(self.mlflow, self.ids.model_name)
            missing = _unrecorded_trials(tis, trial_runs)
            if not missing:
                return trial_runs, read
            if read < TRIAL_RUN_READS:
                time.sleep(TRIAL_RUN_READ_PAUSE_S)
        statuses = ", ".join(f"{run['trial_id']}: {run['status']}" for run in trial_runs)
        problems.append(
            f"trial(s) {', '.join(missing)} succeeded but have no FINISHED MLflow run in "
            f"experiment {self.ids.model_name} after {TRIAL_RUN_READS} reads "
            f"(runs there: {statuses or 'none'})"
        )
        return trial_runs, TRIAL_RUN_READS

    def _task_logs(self, tis: list[dict[str, Any]]) -> dict[str, str]:
        """The logs, every try, of the tasks the expectations read logs of."""
        expect = self.scenario.expect
        logs = {}
        for key in dict.fromkeys([*expect.logs, *expect.logs_lack]):
            ti = next((ti for ti in tis if task_key(ti) == key), None)
            tries = _logs_of_every_try(self.airflow, self.ids.run_id, ti)
            logs[key] = "\n".join(
                log if log is not None else f"(no log of try {attempt})"
                for attempt, log in enumerate(tries, 1)
            )
        return logs

    def _seed_champion(self) -> str | None:
        champion = self.scenario.registry.champion
        if champion is None:
            return None
        self.say("training the seeded champion with the trainer")
        return seeding.train_champion(
            champion,
            s3_endpoint=self.running.services.s3_endpoint,
            mlflow_uri=self.running.services.mlflow_uri,
            model_name=self.ids.model_name,
            data_key=f"{self.ids.data_prefix}/champion/{self.settings.features_file}",
            settings=self.settings,
        )

    def _run(self, progress: _Progress) -> tuple[str, list[PodRecord], list[str]]:
        """Triggers the run, lands the data when due, waits; returns state, pods, problems."""
        scenario, ids, settings = self.scenario, self.ids, self.settings
        day = scenario.logical_date.isoformat()
        landing = seeding.DataLanding(
            self.s3,
            settings.data_bucket,
            f"{ids.data_prefix}/{day}/{settings.features_file}",
            scenario.data,
            settings.sensor_poke_interval_seconds,
            lambda: progress.sensor_deferred,
        )
        problems: list[str] = []
        with self._watched(progress, problems) as pods:
            landing.before_run()
            conf = run_conf(scenario, ids, self.running.pipeline_settings)
            logical_date = ids.logical_date(scenario.logical_date)
            self.airflow.trigger(PIPELINE_DAG_ID, logical_date, conf=conf, run_id=ids.run_id)
            self.say(f"triggered run {ids.run_id} for {day}")
            try:
                final = self.airflow.wait_for_run(
                    PIPELINE_DAG_ID, ids.run_id, scenario.timeout_seconds, on_progress=progress
                )
                run_state = final["state"]
            except AirflowApiError as error:
                problems.append(f"the run did not finish: {error}")
                self.airflow.set_run_state(PIPELINE_DAG_ID, ids.run_id, "failed")
                run_state = "timed out"
            finally:
                landing.cancel()
        if landing.error:
            problems.append(landing.error)
        return run_state, pods.records(), problems

    @contextmanager
    def _watched(self, progress: _Progress, problems: list[str]) -> Iterator[PodRecorder]:
        """The run's pods recorded and its disruptions caused while the block runs; what went
        wrong with either is added to ``problems`` at the end."""
        namespaces = list(self.running.cluster.airflow.namespaces)
        faults, ids = self.scenario.faults, self.ids
        evicted = [f"{TRIAL_TASK_ID}[{f.trial}]" for f in faults.trials if f.fault == "evicted"]
        lost = {
            f"{TRIAL_TASK_ID}[{f.trial}]": f.seconds or NODE_LOST_SECONDS
            for f in faults.trials
            if f.fault == "node_lost"
        }
        scope = {"s3": ids.data_prefix, "mlflow": ids.model_name}
        resource = self.settings.gpu_resource_name
        provider = provider_of(self.running.cluster.info)
        with (
            PodRecorder(self.api, namespaces, ids.run_id, resource) as pods,
            Evictions(self.api, pods, evicted) as evictions,
            NodeLosses(self.api, pods, lost, provider, self.say) as losses,
            ServiceOutages(self.running.proxies, faults.services, ids.run_id, scope) as outages,
        ):
            progress.listeners.append(outages.on_progress)
            self.nodes_lost = losses.lost
            yield pods
        # After the block: an eviction that never happened is known only once it is over.
        problems += pods.errors + evictions.errors + losses.errors + outages.errors
