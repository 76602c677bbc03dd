"""What a production run left behind, read over the APIs an operator has: Airflow's REST API
(the run, every task instance and try, their logs, the pipeline's return values), the cluster
(the run's pods still there, and their events) and the model registry.

Reading only: nothing is changed anywhere. The evidence is plain JSON (the APIs' own answers,
secrets withheld as they are read), so a capture can be kept, shared and mapped again
(``harness.capture.mapping``); the unit tests map recorded evidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from harness.airflow.client import AirflowApiError, AirflowClient
from harness.capture.records import pods_named, public_url, scrub
from harness.scenarios.outcome import task_key
from ml_pipeline import registry

# The tasks whose return values say what the run decided (read where they have one).
DECIDING_TASKS = ("select_best_model", "evaluate_model", "send_notification")
EVIDENCE_VERSION = 1
# What of a task's rendered fields a capture reads (its env, say, may hold secrets: not kept).
RENDERED_FIELDS = ("image", "arguments", "container_resources", "namespace", "name")
# The label the pod operator puts on every pod it makes.
POD_OPERATOR_LABEL = "kubernetes_pod_operator=True"
FINISHED = ("success", "failed")


class RunNotFinished(ValueError):
    """The run is still going: what it ends with is not known yet."""


@dataclass(frozen=True)
class Sources:
    """Where the evidence is read: Airflow (required), the cluster and the registry (optional;
    None: not reachable, and the capture says what it could not read)."""

    airflow: AirflowClient
    dag_id: str
    core_api: k8s.CoreV1Api | None = None
    namespaces: tuple[str, ...] = ()
    mlflow: Any | None = None
    mlflow_url: str = ""
    model_name: str | None = None


def read_evidence(
    sources: Sources, run_id: str, show: Callable[[str], None] = lambda line: None
) -> dict[str, Any]:
    """Everything the capture reads about run ``run_id`` of ``sources.dag_id``, as JSON data.

    Raises AirflowApiError when the run cannot be read, RunNotFinished while it runs; what
    else cannot be read is listed under ``unreadable`` (and the scenario says so).
    """
    airflow, dag_id = sources.airflow, sources.dag_id
    dag_run = scrub(airflow.dag_run(dag_id, run_id))
    if dag_run.get("state") not in FINISHED:
        raise RunNotFinished(
            f"run {run_id} of {dag_id} is {dag_run.get('state')}: capture it once it has finished"
        )
    tis = [_kept(ti) for ti in airflow.task_instances(dag_id, run_id)]
    unreadable: list[str] = []
    evidence: dict[str, Any] = {
        "version": EVIDENCE_VERSION,
        "captured_at": datetime.now(UTC).isoformat(),
        "airflow": public_url(airflow.api_url),
        "dag_id": dag_id,
        "run_id": run_id,
        "dag_run": dag_run,
        "task_instances": tis,
        "tries": {},
        "logs": {},
        "returns": {},
        "unreadable": unreadable,
    }
    for done, ti in enumerate(tis, 1):
        key = task_key(ti)
        evidence["tries"][key] = _tries(airflow, dag_id, run_id, ti, unreadable)
        evidence["logs"][key] = _logs(airflow, dag_id, run_id, ti, unreadable)
        if done % 10 == 0 or done == len(tis):
            show(f"  read the tries and logs of {done} of {len(tis)} task instances")
    for task_id in DECIDING_TASKS:
        try:
            evidence["returns"][task_id] = scrub(airflow.xcom(dag_id, run_id, task_id))
        except AirflowApiError as error:
            unreadable.append(f"the return value of {task_id}: {error}")
    names = {name for logs in evidence["logs"].values() for log in logs for name in pods_named(log)}
    evidence["pods"], evidence["events"] = _cluster(sources, names, unreadable)
    evidence["registry"] = _registry(sources, dag_run, evidence["returns"], unreadable)
    return evidence


def _kept(ti: dict[str, Any]) -> dict[str, Any]:
    """The task instance with only the rendered fields a capture reads."""
    fields = ti.get("rendered_fields") or {}
    kept = {k: fields[k] for k in RENDERED_FIELDS if k in fields}
    return scrub({**ti, "rendered_fields": kept})


def _tries(
    airflow: AirflowClient, dag_id: str, run_id: str, ti: dict[str, Any], unreadable: list[str]
) -> list[dict[str, Any]]:
    if not ti.get("try_number"):
        return []
    try:
        return scrub(airflow.task_tries(dag_id, run_id, ti["task_id"], ti.get("map_index", -1)))
    except AirflowApiError as error:
        unreadable.append(f"the tries of {task_key(ti)}: {error}")
        return []


def _logs(
    airflow: AirflowClient, dag_id: str, run_id: str, ti: dict[str, Any], unreadable: list[str]
) -> list[str | None]:
    """The log of every try, by try number from 1 (None: a try without a log)."""
    logs: list[str | None] = []
    for attempt in range(1, (ti.get("try_number") or 0) + 1):
        try:
            log = airflow.task_log(
                dag_id, run_id, ti["task_id"], attempt, ti.get("map_index", -1), True
            )
            logs.append(scrub(log))
        except AirflowApiError as error:
            if error.status != 404:
                unreadable.append(f"the log of {task_key(ti)} try {attempt}: {error}")
            logs.append(None)
    return logs


def _cluster(
    sources: Sources, names: set[str], unreadable: list[str]
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """The run's pods still on the cluster and the events of the pods its logs name (events
    outlive their pods, an hour by default); None: the cluster was not read."""
    api = sources.core_api
    if api is None:
        unreadable.append("the cluster (no --kubeconfig): the pods' status and events")
        return None, None
    pods: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    serialised = api.api_client.sanitize_for_serialization
    for namespace in sources.namespaces:
        try:
            listed = api.list_namespaced_pod(namespace, label_selector=POD_OPERATOR_LABEL)
            pods += [scrub(serialised(p)) for p in listed.items if p.metadata.name in names]
            found = api.list_namespaced_event(namespace, field_selector="involvedObject.kind=Pod")
            events += [scrub(serialised(e)) for e in found.items if e.involved_object.name in names]
        except (ApiException, HTTPError) as error:
            unreadable.append(f"pods and events in namespace {namespace}: {error}")
    return pods, events


def _registry(
    sources: Sources,
    dag_run: dict[str, Any],
    returns: dict[str, Any],
    unreadable: list[str],
) -> dict[str, Any] | None:
    """The model's versions (tags, when made) and its champion now; None when not read."""
    model_name = (
        sources.model_name
        or (dag_run.get("conf") or {}).get("model_name")
        or (returns.get("evaluate_model") or {}).get("model_name")
    )
    if sources.mlflow is None or not model_name:
        why = "no --mlflow" if sources.mlflow is None else "the run names no model (--model-name)"
        unreadable.append(f"the registry ({why}): the champion before and after")
        return None
    try:
        versions = sources.mlflow.search_model_versions(f"name = '{model_name}'")
        champion = registry.champion_version(sources.mlflow, model_name)
    except Exception as error:  # MLflow's client raises its own and requests' errors
        unreadable.append(f"the registry at {public_url(sources.mlflow_url)}: {error}")
        return None
    return {
        "model_name": model_name,
        "champion": champion,
        "versions": [
            {
                "version": str(v.version),
                "tags": scrub(dict(v.tags)),
                "created_ms": v.creation_timestamp,
            }
            for v in versions
        ],
    }
