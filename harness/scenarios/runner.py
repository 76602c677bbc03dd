"""Replays one scenario through a real DAG run on a running stack and checks what came of it.

The steps, each in a module of its own: the replay's ids and each run's conf (``conf``); the
seeded champion and data (``seeding``); the triggers over the REST API and an operator's
actions (``actions``), with progress shown (``progress``), the run's pods recorded (``pods``)
and its faults caused (``disruptions``) meanwhile; what the run left behind, read back
(``collect``); the comparison with the expectations (``outcome``); on a mismatch, the forensic
bundle (``forensics``). This module only puts them in order, steps of a
timeline side by side where they say so. The run's leftover pods are removed whatever happens.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from harness import runs
from harness.airflow.client import AirflowApiError
from harness.cluster import gpus, provider_of
from harness.cluster.provider import DEVICE_PLUGIN
from harness.pipeline_settings import REPO_ROOT
from harness.scenarios import actions, collect, forensics, seeding
from harness.scenarios.conf import ScenarioIds, run_conf
from harness.scenarios.disruptions import (
    Evictions,
    GpuFailures,
    NodeLosses,
    ServiceOutages,
    gpu_capacity,
)
from harness.scenarios.model import (
    ActionStep,
    Expectations,
    Faults,
    RunStep,
    Scenario,
)
from harness.scenarios.outcome import (
    Outcome,
    RegistryState,
    StepResult,
    compare,
    compare_registry,
    task_key,
)
from harness.scenarios.pods import PodRecord, PodRecorder
from harness.scenarios.progress import Progress
from harness.scenarios.result import ScenarioResult
from harness.stack import PIPELINE_DAG_ID, RunningStack
from harness.steps import say
from harness.waiting import wait_until
from ml_pipeline import registry
from ml_pipeline.settings import PipelineSettings, for_run
from ml_pipeline.task_ids import TRIAL_TASK_ID

REPORTS_DIR = REPO_ROOT / "reports" / "scenarios"
# How long a lost node stays away when the fault does not say (past the NotReady mark).
NODE_LOST_SECONDS = 45.0


def _core_api(running: RunningStack) -> k8s.CoreV1Api:
    config_file = str(running.cluster.info.admin_kubeconfig)
    return k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=config_file))


class ScenarioSkipped(Exception):
    """The stack lacks what the scenario requires (``requires``); the message says what."""


def unmet_requirement(scenario: Scenario, running: RunningStack) -> str | None:
    """Why ``scenario`` cannot be replayed on ``running``, or None."""
    info = running.cluster.info
    if "owned_cluster" in scenario.requires and not info.owned:
        return (
            f"scenario {scenario.name} requires a cluster the harness made "
            f"({'; '.join(scenario.needs_of_an_owned_cluster())}); the {info.provider} cluster "
            f"{info.name} is not the harness's to change"
        )
    if "device_plugin" in scenario.requires and info.gpus != DEVICE_PLUGIN:
        return (
            f"scenario {scenario.name} requires GPUs the harness's device plugin hands out; "
            f"the {info.provider} cluster {info.name}'s come from {info.gpus} (local-up and kind "
            "have them)"
        )
    return None


class ReplayCancelled(Exception):
    """The replay was asked to stop (Ctrl-C of a replay of several scenarios at once)."""


def replay(
    running: RunningStack,
    scenario: Scenario,
    reports_dir: Path = REPORTS_DIR,
    show: Callable[[str], None] = say,
    cancelled: threading.Event | None = None,
) -> ScenarioResult:
    """Replays ``scenario`` on ``running`` and returns what matched and what did not; raises
    ScenarioSkipped, before anything starts, where the stack lacks what it requires. Once
    ``cancelled`` is set, the replay stops at its next poll, ending its runs and pods."""
    reason = unmet_requirement(scenario, running)
    if reason:
        raise ScenarioSkipped(reason)
    replaying = _Replay(running, scenario, show, cancelled or threading.Event())
    report_dir = reports_dir / replaying.ids.run_id
    report_dir.mkdir(parents=True, exist_ok=True)
    with runs.cluster_share(running.airflow.home, scenario.changes_the_cluster, show):
        try:
            return _replayed(replaying, report_dir)
        finally:
            # A replay that ends early (Ctrl-C, an error) leaves no run going and no pod behind.
            namespaces = list(running.cluster.airflow.namespaces)
            for run_id in replaying.run_ids():
                runs.end_run(replaying.airflow, replaying.api, PIPELINE_DAG_ID, namespaces, run_id)


def _replayed(replaying: _Replay, report_dir: Path) -> ScenarioResult:
    """The outcomes compared with the expectations; a forensic bundle on any mismatch."""
    scenario, running = replaying.scenario, replaying.running
    mismatches: list[str] = []
    cancelled = False
    try:
        steps = replaying.play()
    except ReplayCancelled as error:  # Ctrl-C: no forensic bundle, the runs end at once
        steps, cancelled = replaying.finished, True
        mismatches.append(str(error))
    except Exception as error:  # the scenario fails with the reason; the others go on
        steps = replaying.finished
        mismatches.append(f"the replay failed before its outcome was collected: {error!r}")
    labelled = len(scenario.steps()) > 1
    for step in steps:
        mismatches += [f"{step.label}: {m}" if labelled else m for m in step.mismatches]
        for line in step.outcome.unchecked:
            replaying.say(f"not checked: {line}")
    if len(steps) == len(scenario.steps()):
        mismatches += replaying.registry_mismatches()
    report = {
        "scenario": scenario.name,
        "seconds": round(replaying.elapsed(), 1),
        "steps": [step.as_json() for step in steps],
        "registry": replaying.registry_json(),
    }
    (report_dir / "outcome.json").write_text(json.dumps(report, indent=2, default=str))
    first = steps[0].outcome if steps else None
    result = ScenarioResult(
        scenario, replaying.ids.run_id, first, mismatches, replaying.elapsed(), report_dir, steps
    )
    if mismatches and not cancelled:
        for run in list(replaying.runs.values()):
            pods = [
                pod.name for step in steps if step.run_id == run.run_id for pod in step.outcome.pods
            ]
            folder = report_dir / run.name if labelled else report_dir
            result.bundle = forensics.write_bundle(
                folder, running, replaying.api, run.run_id, mismatches, pods
            )
    return result


@dataclass
class _Run:
    """One DAG run of a replay: its name in the scenario, its ids, its conf."""

    name: str
    step: RunStep
    run_id: str
    conf: dict[str, Any]
    logical_date: datetime

    @property
    def data_prefix(self) -> str:
        """Where its features land (its conf's, so a run triggered again shares them)."""
        return self.conf["data_prefix"]


def _groups(steps: list[RunStep | ActionStep]) -> list[list[RunStep | ActionStep]]:
    """The steps in order, those ``with_previous`` joined to the step before them."""
    groups: list[list[RunStep | ActionStep]] = []
    for step in steps:
        if step.with_previous and groups:
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


class _Replay:
    """One replay's steps: seed the registry, then each run and action in order, collecting what
    each ended with."""

    def __init__(
        self,
        running: RunningStack,
        scenario: Scenario,
        show: Callable[[str], None],
        cancelled: threading.Event,
    ) -> None:
        self.started = time.monotonic()
        self.cancelled = cancelled
        self.running, self.scenario, self.show = running, scenario, show
        self.ids = ScenarioIds.new(scenario.name)
        self.settings = PipelineSettings(**running.pipeline_settings)
        self.api = _core_api(running)
        self.s3 = seeding.s3_client(running.services.s3_endpoint)
        self.mlflow = registry.client_for(running.services.mlflow_uri)
        self.airflow = running.client()
        self.runs: dict[str, _Run] = {}
        self.finished: list[StepResult] = []
        self.seeded: str | None = None
        self.capacity = 0
        # What NodeLosses did, by run id: task, node, seconds until NotReady and until back.
        self.nodes_lost: dict[str, list[dict[str, Any]]] = {}
        # What GpuFailures did, by run id: task, pod, node, devices, when.
        self.gpu_failures: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        """Seconds since the replay began."""
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        """A progress line naming the scenario and the time so far."""
        self.show(f"    [{self.scenario.name} {self.elapsed():5.0f} s] {message}")

    def run_ids(self) -> list[str]:
        """The ids of the runs triggered so far."""
        with self._lock:
            return [run.run_id for run in self.runs.values()]

    def play(self) -> list[StepResult]:
        """Every step of the scenario, in order; those with_previous side by side."""
        info = self.running.cluster.info
        wanted = self.scenario.cluster
        held = gpu_capacity(
            self.api, info, wanted.gpu_capacity, wanted.gpu_replicas, wanted.gpu_resource
        )
        with held as capacity:
            self.capacity = capacity
            self.seeded = self._seed_champion()
            for group in _groups(self.scenario.steps()):
                self.stop_if_cancelled()
                self.finished += self._play_group(group)
        return self.finished

    def stop_if_cancelled(self, *_: object) -> None:
        """Raises ReplayCancelled once the replay was asked to stop (a progress listener)."""
        if self.cancelled.is_set():
            raise ReplayCancelled(f"replay of {self.scenario.name} cancelled")

    def _play_group(self, group: list[RunStep | ActionStep]) -> list[StepResult]:
        if len(group) == 1:
            return [self._play(group[0])]
        with ThreadPoolExecutor(len(group), thread_name_prefix=self.scenario.name) as pool:
            return list(pool.map(self._play, group))

    def _play(self, step: RunStep | ActionStep) -> StepResult:
        if isinstance(step, RunStep):
            run = self._new_run(step, step.run)
            return self._drive(run, f"run {run.name}", step.expect, self._trigger(run), land=True)
        return self._act(step)

    def _new_run(self, step: RunStep, name: str, like: _Run | None = None) -> _Run:
        with self._lock:
            index = len(self.runs)
            day = step.logical_date or self.scenario.logical_date
            profile = self.running.pipeline_settings
            run = _Run(
                name=name,
                step=step,
                run_id=self.ids.run_id_of(index),
                conf=like.conf if like else run_conf(self.scenario, self.ids, profile, step, index),
                logical_date=self.ids.logical_date(day, index),
            )
            self.runs[name] = run
        return run

    def _trigger(self, run: _Run) -> Callable[[], None]:
        def trigger() -> None:
            self.airflow.trigger(
                PIPELINE_DAG_ID, run.logical_date, conf=run.conf, run_id=run.run_id
            )
            self.say(f"triggered run {run.run_id} for {run.logical_date.date()}")

        return trigger

    def _act(self, action: ActionStep) -> StepResult:
        """Does what the action says to its run, then waits for the run to settle again."""
        target = self._run_named(action.target)
        if action.when_task:
            actions.wait_for_task(
                self.airflow,
                target.run_id,
                action.when_task,
                action.when_state,
                self.scenario.timeout_seconds,
                target.name,
            )
        label = f"{action.action} on {target.name}"
        if action.action == "trigger_again":
            assert action.new_run
            run = self._new_run(target.step, action.new_run, like=target)
            return self._drive(run, label, action.expect, self._trigger(run))

        def start() -> None:
            actions.apply(self.airflow, action, target.run_id)
            self.say(f"{action.action} on {target.run_id}")

        clears = action.action in ("clear_tasks", "clear_run")
        return self._drive(target, label, action.expect, start, again=True, must_requeue=clears)

    def _run_named(self, name: str) -> _Run:
        """The run called ``name``; an action beside its run's step waits for it to begin."""
        return wait_until(
            lambda: self.runs.get(name),
            timeout=actions.RESTART_SECONDS,
            interval=0.2,
            timed_out=f"run {name} did not start within {actions.RESTART_SECONDS:.0f} s",
            error=TimeoutError,
        )

    def _drive(
        self,
        run: _Run,
        label: str,
        expect: Expectations,
        start: Callable[[], None],
        land: bool = False,
        again: bool = False,
        must_requeue: bool = False,
    ) -> StepResult:
        """Starts the step (a trigger or an action), waits for the run to settle, compares.

        ``land``: the run's data lands and its faults happen (a run step); ``again``: the run
        exists and finished (an action), so its end is awaited anew.
        """
        champion_before = registry.champion_version(self.mlflow, self.ids.model_name)
        progress = Progress(f"{self.scenario.name} {run.name}", self.started, self.show)
        progress.listeners.append(self.stop_if_cancelled)
        with runs.claimed(self.running.airflow.home, run.run_id):
            run_state, pods, problems = self._wait(run, progress, start, land, again, must_requeue)
            outcome = self._collect(run, run_state, pods, problems, progress, expect)
        outcome.champion_before = champion_before
        outcome.run_versions = self._run_versions()
        return StepResult(label, run.run_id, outcome, compare(expect, outcome))

    def _wait(
        self,
        run: _Run,
        progress: Progress,
        start: Callable[[], None],
        land: bool,
        again: bool,
        must_requeue: bool,
    ) -> tuple[str, list[PodRecord], list[str]]:
        """Lands the data when due, starts the step, waits; returns state, pods, problems."""
        settings, data = self.settings, self.scenario.run_data(run.step)
        day = run.logical_date.date().isoformat()
        landing = seeding.DataLanding(
            self.s3,
            settings.data_bucket,
            f"{run.data_prefix}/{day}/{settings.features_file}",
            data,
            settings.sensor_poke_interval_seconds,
            lambda: progress.sensor_deferred,
        )
        problems: list[str] = []
        timeout = run.step.timeout_seconds or self.scenario.timeout_seconds
        with self._watched(run, progress, problems, faults=land) as pods:
            if land:
                landing.before_run()
            was = self.airflow.dag_run(PIPELINE_DAG_ID, run.run_id) if again else None
            start()
            if was is not None and not actions.await_restart(
                self.airflow, run.run_id, was, must_requeue
            ):
                problems.append(
                    f"run {run.name} was not queued again within {actions.RESTART_SECONDS:.0f} s "
                    "of the "
                    "action, so what follows is its old end"
                )
            try:
                final = self.airflow.wait_for_run(
                    PIPELINE_DAG_ID, run.run_id, timeout, on_progress=progress
                )
                run_state = final["state"]
            except AirflowApiError as error:
                problems.append(f"the run did not finish: {error}")
                self.airflow.set_run_state(PIPELINE_DAG_ID, run.run_id, "failed")
                run_state = "timed out"
            finally:
                landing.cancel()
        if landing.error:
            problems.append(landing.error)
        return run_state, pods.records(), problems

    def _collect(
        self,
        run: _Run,
        run_state: str,
        pods: list[PodRecord],
        problems: list[str],
        progress: Progress,
        expect: Expectations,
    ) -> Outcome:
        """Everything the expectations may ask about, once the run settled."""
        model_name = self.ids.model_name
        tis = self.airflow.task_instances(PIPELINE_DAG_ID, run.run_id)
        candidate, candidate_tags = collect.candidate(self.mlflow, model_name, run.run_id)
        trial_runs, reads = collect.recorded_trial_runs(
            self.mlflow, model_name, run.run_id, tis, problems
        )
        notification = collect.notification(self.s3, self.settings, run.run_id)
        rule = for_run(self.settings, run.conf)
        return Outcome(
            run_id=run.run_id,
            run_state=run_state,
            tasks={task_key(ti): ti.get("state") or "none" for ti in tis},
            task_instances=[collect.timeline_fields(ti) for ti in tis],
            pods=pods,
            gpu_nodes=self.running.cluster.info.gpu_nodes,
            gpu_capacity=self.capacity,
            seeded_champion=self.seeded,
            champion_before=None,
            champion_after=registry.champion_version(self.mlflow, model_name),
            candidate_version=candidate,
            candidate_tags=candidate_tags,
            notification=notification,
            sensor_deferred=progress.sensor_deferred,
            sensor_pokes=collect.sensor_poke_count(self.airflow, run.run_id, tis),
            problems=problems,
            trial_metrics=collect.trial_metrics(trial_runs),
            trial_runs=[
                {key: run[key] for key in ("trial_id", "run_id", "status")} for run in trial_runs
            ],
            trial_run_reads=reads,
            nodes_lost=list(self.nodes_lost.get(run.run_id, [])),
            gpu_failures=list(self.gpu_failures.get(run.run_id, [])),
            task_logs=collect.task_logs(self.airflow, run.run_id, tis, expect),
            champion_logged_metric=collect.logged_metric(
                self.mlflow, model_name, notification, rule.evaluation_metric
            ),
            promotion_rule=rule.promotion_rule(),
            run_dates=collect.run_dates(self.airflow.dag_run(PIPELINE_DAG_ID, run.run_id)),
        )

    def _run_versions(self) -> dict[str, str]:
        with self._lock:
            names = {run.run_id: run.name for run in self.runs.values()}
        return collect.run_versions(self.mlflow, self.ids.model_name, names)

    def registry_mismatches(self) -> list[str]:
        """How the registry and the champion history differ from ``expect_registry``."""
        wanted = self.scenario.expect_registry
        if not wanted.model_fields_set:
            return []
        return compare_registry(wanted, self._registry_state())

    def registry_json(self) -> dict[str, Any]:
        """The registry's end state for the report (empty when it cannot be read)."""
        try:
            return self._registry_state().as_json()
        except Exception as error:  # the report still gets written
            return {"error": repr(error)}

    def _registry_state(self) -> RegistryState:
        labels = self._run_versions()
        if self.seeded:
            labels[self.seeded] = "seeded"
        return collect.registry_state(
            self.mlflow, self.s3, self.settings, self.ids.model_name, labels, self.finished
        )

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

    @contextmanager
    def _watched(
        self, run: _Run, progress: Progress, problems: list[str], faults: bool = True
    ) -> Iterator[PodRecorder]:
        """The run's pods recorded and its disruptions caused while the block runs; what went
        wrong with either is added to ``problems`` at the end. ``faults`` False: pods only (a
        run settling again after an action)."""
        namespaces = list(self.running.cluster.airflow.namespaces)
        run_faults = self.scenario.run_faults(run.step) if faults else Faults()
        evicted = [f"{TRIAL_TASK_ID}[{f.trial}]" for f in run_faults.trials if f.fault == "evicted"]
        lost = {
            f"{TRIAL_TASK_ID}[{f.trial}]": f.seconds or NODE_LOST_SECONDS
            for f in run_faults.trials
            if f.fault == "node_lost"
        }
        failing = {
            f"{TRIAL_TASK_ID}[{f.trial}]": f.seconds
            for f in run_faults.trials
            if f.fault == "gpu_unhealthy"
        }
        scope = {"s3": run.data_prefix, "mlflow": self.ids.model_name}
        # What the scenario's GPUs are advertised as (a MIG profile, or the pipeline's own).
        resource = self.scenario.cluster.gpu_resource or self.settings.gpu_resource_name
        info = self.running.cluster.info
        provider = provider_of(info)
        devices_of = gpus.pod_devices(info, resource)
        with (
            PodRecorder(self.api, namespaces, run.run_id, resource, devices_of) as pods,
            Evictions(self.api, pods, evicted) as evictions,
            NodeLosses(self.api, pods, lost, provider, self.say) as losses,
            GpuFailures(self.api, info, pods, failing, provider, self.say) as failures,
            ServiceOutages(self.running.proxies, run_faults.services, run.run_id, scope) as outages,
        ):
            progress.listeners.append(outages.on_progress)
            if faults:  # an action's watch has none: it must not hide the run's own losses
                self.nodes_lost[run.run_id] = losses.lost
                self.gpu_failures[run.run_id] = failures.failed
            yield pods
        # After the block: an eviction that never happened is known only once it is over.
        problems += pods.errors + evictions.errors + losses.errors + failures.errors
        problems += outages.errors
