"""What a replayed run left behind, read back: registry versions and tags, trial runs in MLflow,
the notification and the alias ledger in S3, task logs of every try.

Reading only: the comparison with the expectations is ``outcome.compare``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from botocore.exceptions import ClientError

from harness.airflow.client import AirflowApiError, AirflowClient
from harness.scenarios.model import Expectations
from harness.scenarios.outcome import RegistryState, StepResult, sensor_pokes, task_key
from harness.stack import PIPELINE_DAG_ID
from ml_pipeline import registry
from ml_pipeline.notification import notification_key
from ml_pipeline.settings import PipelineSettings
from ml_pipeline.task_ids import SENSOR_TASK_ID, TRIAL_TASK_ID
from trainer import history

TRIAL_RUN_READS = 3
TRIAL_RUN_READ_PAUSE_S = 5.0


def candidate(client: Any, model_name: str, run_id: str) -> tuple[str | None, dict[str, str]]:
    """The version this run registered, and its tags."""
    for version in client.search_model_versions(f"name = '{model_name}'"):
        if version.tags.get("dag_run_id") == run_id:
            return str(version.version), dict(version.tags)
    return None, {}


def logged_metric(
    client: Any, model_name: str, notification: dict[str, Any] | None, metric: str
) -> float | None:
    """The ``metric`` the champion the evaluation compared with logged when it was trained."""
    version = ((notification or {}).get("evaluation") or {}).get("champion_version")
    if version is None:
        return None
    run_id = client.get_model_version(model_name, str(version)).run_id
    return client.get_run(run_id).data.metrics.get(metric) if run_id else None


def trial_runs(client: Any, experiment_name: str, dag_run_id: str) -> list[dict[str, str]]:
    """Every trial run of the DAG run in the experiment, any status (all its tries).

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
        if run.data.tags.get("dag_run_id") == dag_run_id
    ]


def unrecorded_trials(tis: list[dict[str, Any]], trial_runs: list[dict[str, Any]]) -> list[str]:
    """The map indexes of trial tasks that succeeded without a FINISHED MLflow run."""
    finished = {run["trial_id"] for run in trial_runs if run["status"] == "FINISHED"}
    return [
        str(ti.get("map_index"))
        for ti in tis
        if ti["task_id"] == TRIAL_TASK_ID
        and ti.get("state") == "success"
        and str(ti.get("map_index")) not in finished
    ]


def trial_metrics(trial_runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each trial's metrics from its finished MLflow run (the last one, for a retried trial)."""
    return {
        run["trial_id"]: run["metrics"]
        for run in trial_runs
        if run["status"] == "FINISHED" and run["trial_id"] != "?"
    }


def artifact(s3: Any, settings: PipelineSettings, key: str) -> bytes | None:
    """An object of the artifacts bucket; None when the pipeline has not written it."""
    try:
        return s3.get_object(Bucket=settings.artifacts_bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise


def notification(s3: Any, settings: PipelineSettings, run_id: str) -> dict[str, Any] | None:
    body = artifact(
        s3, settings, notification_key(settings.notifications_prefix, PIPELINE_DAG_ID, run_id)
    )
    return None if body is None else json.loads(body)


def champion_history(s3: Any, settings: PipelineSettings, model_name: str) -> list[dict[str, Any]]:
    """The moves of the champion alias the deploy pods wrote (trainer.history's ledger)."""
    key = f"{settings.deployment_records_prefix}/{model_name}/{history.HISTORY_FILE}"
    body = artifact(s3, settings, key)
    return [] if body is None else history.parse_moves(body.decode(), key)


def logs_of_every_try(
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


def sensor_poke_count(airflow: AirflowClient, run_id: str, tis: list[dict[str, Any]]) -> int:
    sensor = next((ti for ti in tis if ti["task_id"] == SENSOR_TASK_ID), None)
    # A try without a log poked nothing.
    return sum(sensor_pokes(log) for log in logs_of_every_try(airflow, run_id, sensor) if log)


def timeline_fields(ti: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "task_id",
        "map_index",
        "state",
        "try_number",
        "queued_when",
        "start_date",
        "end_date",
        "duration",
    )
    return {key: ti.get(key) for key in keys}


def run_dates(dag_run: dict[str, Any]) -> dict[str, Any]:
    """When the DAG run started and ended (ISO strings, as Airflow's API gives them)."""
    return {key: dag_run.get(key) for key in ("queued_at", "start_date", "end_date")}


def recorded_trial_runs(
    client: Any, model_name: str, run_id: str, tis: list[dict[str, Any]], problems: list[str]
) -> tuple[list[dict[str, Any]], int]:
    """The run's trial runs in MLflow, and how many reads it took to see every succeeded
    trial's.

    A trial task succeeds only after its trainer ended its MLflow run FINISHED, so one read
    should do. It is read up to 3 times, 5 s apart, to tell a late write from a lost one;
    a trial still without a finished run is a problem of the replay (with its bundle).
    """
    for read in range(1, TRIAL_RUN_READS + 1):
        runs = trial_runs(client, model_name, run_id)
        missing = unrecorded_trials(tis, runs)
        if not missing:
            return runs, read
        if read < TRIAL_RUN_READS:
            time.sleep(TRIAL_RUN_READ_PAUSE_S)
    statuses = ", ".join(f"{run['trial_id']}: {run['status']}" for run in runs)
    problems.append(
        f"trial(s) {', '.join(missing)} succeeded but have no FINISHED MLflow run in "
        f"experiment {model_name} after {TRIAL_RUN_READS} reads "
        f"(runs there: {statuses or 'none'})"
    )
    return runs, TRIAL_RUN_READS


def task_logs(
    airflow: AirflowClient, run_id: str, tis: list[dict[str, Any]], expect: Expectations
) -> dict[str, str]:
    """The logs, every try, of the tasks the expectations read logs of."""
    logs = {}
    for key in dict.fromkeys([*expect.logs, *expect.logs_lack]):
        ti = next((ti for ti in tis if task_key(ti) == key), None)
        tries = logs_of_every_try(airflow, run_id, ti)
        logs[key] = "\n".join(
            log if log is not None else f"(no log of try {attempt})"
            for attempt, log in enumerate(tries, 1)
        )
    return logs


def run_versions(client: Any, model_name: str, run_names: dict[str, str]) -> dict[str, str]:
    """Version -> the name of the run (by ``run_names``, id -> name) that registered it."""
    found: dict[str, str] = {}
    for version in client.search_model_versions(f"name = '{model_name}'"):
        name = run_names.get(version.tags.get("dag_run_id", ""))
        if name:
            found[str(version.version)] = name
    return found


def registry_state(
    client: Any,
    s3: Any,
    settings: PipelineSettings,
    model_name: str,
    labels: dict[str, str],
    steps: list[StepResult],
) -> RegistryState:
    """The registry at the end of a replay: versions and tags, the champion, the alias ledger,
    and each run's last notified outcome (a run acted on ends with its last action)."""
    last: dict[str, StepResult] = {}
    for step in steps:
        last[step.run_id] = step
    return RegistryState(
        versions={
            str(v.version): dict(v.tags)
            for v in client.search_model_versions(f"name = '{model_name}'")
        },
        champion=registry.champion_version(client, model_name),
        moves=champion_history(s3, settings, model_name),
        labels=labels,
        outcomes=[
            (step.outcome.notification or {}).get("outcome", "none") for step in last.values()
        ],
    )
