"""What a production run left behind, read over the APIs an operator has: Airflow's REST API
(the run, every task instance and try, their logs, the pipeline's return values), the cluster
(the run's pods still there, and their events) and the model registry.

Reading only, nothing is changed anywhere. The evidence is plain JSON (the APIs' own answers),
so a capture can be kept, shared and mapped again (``harness.capture.mapping``), and the unit
tests map recorded evidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from harness.airflow.client import AirflowApiError, AirflowClient
from harness.pipeline_settings import REPO_ROOT  # noqa: F401  (puts ml_pipeline on the path)
from ml_pipeline import registry
from ml_pipeline.task_ids import SENSOR_TASK_ID

# The tasks whose return values say what the run decided (read when they have one).
DECIDING_TASKS = ("select_best_model", "evaluate_model", "send_notification")
EVIDENCE_VERSION = 1
# What of a task's rendered fields a capture reads (its env, say, may hold secrets: not kept).
RENDERED_FIELDS = ("image", "arguments", "container_resources", "namespace", "name")
# Keys whose values are never kept or written (a conf's password, a token...).
SECRET_NAME = re.compile(r"pass(word)?|secret|token|credential|private|api_?key|auth", re.I)
WITHHELD = "<withheld>"
PIPELINE_POD_NAMES = (
    "train-trial",
    "validate-data",
    "preprocess-data",
    "score-models",
    "deploy-model",
)


def task_key(task_id: str, map_index: int | None) -> str:
    """``task_id``, or ``task_id[i]`` for one map index of a mapped task."""
    return task_id if map_index is None or map_index < 0 else f"{task_id}[{map_index}]"


@dataclass(frozen=True)
class Sources:
    """Where the evidence is read: Airflow (required), the cluster and the registry (optional;
    None: not reachable, and the capture says what it could not read)."""

    airflow: AirflowClient
    dag_id: str
    core_api: k8s.CoreV1Api | None = None
    namespaces: tuple[str, ...] = ()
    mlflow: Any | None = None
    model_name: str | None = None


def read_evidence(sources: Sources, run_id: str) -> dict[str, Any]:
    """Everything the capture reads about run ``run_id`` of ``sources.dag_id``, as JSON data.

    Raises AirflowApiError when the run cannot be read; what else cannot be read is listed
    under ``unreadable`` (and the mapping says so in the scenario).
    """
    airflow, dag_id = sources.airflow, sources.dag_id
    dag_run = scrub(airflow.dag_run(dag_id, run_id))
    tis = [_kept(ti) for ti in airflow.task_instances(dag_id, run_id)]
    unreadable: list[str] = []
    evidence: dict[str, Any] = {
        "version": EVIDENCE_VERSION,
        "captured_at": datetime.now(UTC).isoformat(),
        "airflow": airflow.api_url,
        "dag_id": dag_id,
        "run_id": run_id,
        "dag_run": dag_run,
        "task_instances": tis,
        "tries": {},
        "logs": {},
        "returns": {},
        "unreadable": unreadable,
    }
    for ti in tis:
        key = task_key(ti["task_id"], ti.get("map_index"))
        evidence["tries"][key] = _tries(airflow, dag_id, run_id, ti, unreadable)
        evidence["logs"][key] = _logs(airflow, dag_id, run_id, ti, unreadable)
    for task_id in DECIDING_TASKS:
        try:
            evidence["returns"][task_id] = airflow.xcom(dag_id, run_id, task_id)
        except AirflowApiError as error:
            unreadable.append(f"the return value of {task_id}: {error}")
    pod_names = {
        name for logs in evidence["logs"].values() for log in logs for name in _pods_named(log)
    }
    evidence["pods"], evidence["events"] = _cluster(sources, dag_id, run_id, pod_names, unreadable)
    evidence["registry"] = _registry(sources, dag_run, evidence["returns"], unreadable)
    return evidence


def scrub(value: Any) -> Any:
    """``value`` with every secret-looking key's value replaced by ``<withheld>``."""
    if isinstance(value, dict):
        return {
            key: WITHHELD if SECRET_NAME.search(str(key)) else scrub(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [scrub(item) for item in value]
    return value


def _kept(ti: dict[str, Any]) -> dict[str, Any]:
    """The task instance with only the rendered fields a capture reads."""
    fields = ti.get("rendered_fields") or {}
    return {**ti, "rendered_fields": {k: fields[k] for k in RENDERED_FIELDS if k in fields}}


def _tries(
    airflow: AirflowClient, dag_id: str, run_id: str, ti: dict[str, Any], unreadable: list[str]
) -> list[dict[str, Any]]:
    if not ti.get("try_number"):
        return []
    try:
        return airflow.task_tries(dag_id, run_id, ti["task_id"], ti.get("map_index", -1))
    except AirflowApiError as error:
        unreadable.append(f"the tries of {task_key(ti['task_id'], ti.get('map_index'))}: {error}")
        return []


def _logs(
    airflow: AirflowClient, dag_id: str, run_id: str, ti: dict[str, Any], unreadable: list[str]
) -> list[str | None]:
    """The log of every try (None: a try without a log, e.g. one that never started)."""
    logs: list[str | None] = []
    for attempt in range(1, (ti.get("try_number") or 0) + 1):
        try:
            logs.append(
                airflow.task_log(
                    dag_id, run_id, ti["task_id"], attempt, ti.get("map_index", -1), True
                )
            )
        except AirflowApiError as error:
            if error.status != 404:
                key = task_key(ti["task_id"], ti.get("map_index"))
                unreadable.append(f"the log of {key} try {attempt}: {error}")
            logs.append(None)
    return logs


def _pods_named(log: str | None) -> set[str]:
    """The pods a pod task's log says it made (the operator logs each one it builds)."""
    return set(re.findall(r"Building pod (\S+) with labels", log or ""))


def _cluster(
    sources: Sources, dag_id: str, run_id: str, pod_names: set[str], unreadable: list[str]
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """The run's pods still on the cluster, the events of its pods (those still listed and
    those its tasks' logs name) and of the nodes they ran on (None: not read)."""
    api = sources.core_api
    if api is None:
        unreadable.append("the cluster (no --kubeconfig): pods and their events")
        return None, None
    selector = f"dag_id={make_safe_label_value(dag_id)},run_id={make_safe_label_value(run_id)}"
    pods: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for namespace in sources.namespaces:
        try:
            listed = api.list_namespaced_pod(namespace, label_selector=selector)
            pods += [api.api_client.sanitize_for_serialization(pod) for pod in listed.items]
            # Events outlive their pods (an hour by default): those of the pods the logs name.
            found = api.list_namespaced_event(namespace, field_selector="involvedObject.kind=Pod")
            events += [api.api_client.sanitize_for_serialization(e) for e in found.items]
        except (ApiException, HTTPError) as error:
            unreadable.append(f"pods and events in namespace {namespace}: {error}")
    names = pod_names | {pod["metadata"]["name"] for pod in pods}
    events = [e for e in events if (e.get("involvedObject") or {}).get("name") in names]
    return pods, events + _node_events(api, events, unreadable)


def _node_events(
    api: k8s.CoreV1Api, pod_events: list[dict[str, Any]], unreadable: list[str]
) -> list[dict[str, Any]]:
    """The events of the nodes the run's pods were assigned to (NodeNotReady, ...)."""
    nodes = {
        found[1]
        for event in pod_events
        if (found := re.search(r" to (\S+)$", event.get("message") or ""))
        and event.get("reason") == "Scheduled"
    }
    try:
        listed = api.list_event_for_all_namespaces(field_selector="involvedObject.kind=Node")
    except (ApiException, HTTPError) as error:
        unreadable.append(f"node events: {error}")
        return []
    return [
        api.api_client.sanitize_for_serialization(event)
        for event in listed.items
        if event.involved_object.name in nodes
    ]


def _registry(
    sources: Sources,
    dag_run: dict[str, Any],
    returns: dict[str, Any],
    unreadable: list[str],
) -> dict[str, Any] | None:
    """The model's versions (tags, aliases) and its champion now; None when not read."""
    model_name = (
        sources.model_name
        or (dag_run.get("conf") or {}).get("model_name")
        or (returns.get("evaluate_model") or {}).get("model_name")
    )
    if sources.mlflow is None or not model_name:
        why = "no --mlflow" if sources.mlflow is None else "the run names no model (--model-name)"
        unreadable.append(f"the registry ({why}): the champion before and after, candidate tags")
        return None
    try:
        versions = sources.mlflow.search_model_versions(f"name = '{model_name}'")
        champion = registry.champion_version(sources.mlflow, model_name)
    except Exception as error:  # MLflow's client raises its own and requests' errors
        unreadable.append(f"the registry at {sources.mlflow.tracking_uri}: {error}")
        return None
    return {
        "model_name": model_name,
        "champion": champion,
        "versions": [
            {
                "version": str(v.version),
                "tags": dict(v.tags),
                "aliases": list(getattr(v, "aliases", []) or []),
                "created_ms": v.creation_timestamp,
            }
            for v in versions
        ],
    }


def sensor_logs(evidence: dict[str, Any]) -> list[str]:
    """The sensor's logs of every try (those it has)."""
    return [log for log in evidence["logs"].get(SENSOR_TASK_ID, []) if log]
