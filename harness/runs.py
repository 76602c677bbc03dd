"""DAG runs on the stack that a process claims, and what is left when that process dies.

A replay claims its run with a marker in the stack's state folder naming its process. When the
process dies (``kill -9``, a lost CI runner) Airflow would go on with a run nobody reads, its
pods holding the GPU node's capacity: the next ``up`` ends such runs and removes their pods.
``down`` needs none of this: it removes Airflow, the cluster and the markers with the state
folder. Below the stack: the stack calls it, and so do the scenario replays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_fixed

from harness.airflow.client import AirflowApiError, AirflowClient
from harness.locks import held
from harness.paths import private_dir
from harness.processes import start_time
from harness.steps import say

END_TRIES = 3
_UNFINISHED = ("queued", "running")


def markers_dir(airflow_home: Path) -> Path:
    """Where the replays of the stack whose Airflow lives in ``airflow_home`` leave markers."""
    return airflow_home.parent / "replays"


@contextmanager
def claimed(airflow_home: Path, run_id: str) -> Iterator[None]:
    """Marks ``run_id`` as this process's for as long as the block runs."""
    folder = private_dir(markers_dir(airflow_home))
    marker = folder / f"{run_id}.json"
    pid = os.getpid()
    marker.write_text(json.dumps({"run_id": run_id, "pid": pid, "started": start_time(pid)}))
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


@contextmanager
def cluster_share(airflow_home: Path, alone: bool, show: Callable[[str], None]) -> Iterator[None]:
    """The cluster for one replay: shared with the stack's other replays, or held ``alone``.

    A replay that changes the cluster (takes a node away, sets the GPU capacity) holds it alone:
    every pod on a lost node would be lost, other scenarios' too, and another capacity would
    change how their trials queue. It waits for the replays running (on other pytest workers)
    to end, and they wait for it. A lock file (``flock``), so a killed replay's share goes with
    its process.
    """

    def waiting() -> None:
        show("    waiting for the other replays to end: this scenario changes the cluster")

    lock = markers_dir(airflow_home).parent / "cluster.lock"
    with held(lock, exclusive=alone, waiting=waiting if alone else None):
        yield


def remove_pods(api: k8s.CoreV1Api, namespaces: list[str], run_id: str) -> list[str]:
    """Deletes every pod the run left (labelled with its run id); returns their names."""
    removed = []
    for namespace in namespaces:
        try:
            pods = api.list_namespaced_pod(namespace, label_selector=f"run_id={run_id}").items
            for pod in pods:
                api.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
                removed.append(pod.metadata.name)
        except ApiException as error:
            if error.status != 404:
                say(f"    could not remove the pods of run {run_id} in {namespace}: {error.reason}")
    return removed


def end_run(
    airflow: AirflowClient, api: k8s.CoreV1Api, dag_id: str, namespaces: list[str], run_id: str
) -> bool:
    """Fails ``run_id`` if it has not finished and removes its pods; False if Airflow refused.

    Airflow's answer may be late (SQLite's writer lock held by the scheduler while several
    replays end at once, a 500 after its busy timeout): asked again, up to END_TRIES times. The
    pods are removed whatever Airflow said."""

    def end() -> None:
        if airflow.dag_run(dag_id, run_id)["state"] in _UNFINISHED:
            airflow.set_run_state(dag_id, run_id, "failed")

    ended = True
    try:
        Retrying(
            stop=stop_after_attempt(END_TRIES),
            wait=wait_fixed(2),
            retry=retry_if_exception(_transient),
            reraise=True,
        )(end)
    except AirflowApiError as error:
        if error.status != 404:
            say(f"    could not end run {run_id}: {error}")
            ended = False
    remove_pods(api, namespaces, run_id)
    return ended


def _transient(error: BaseException) -> bool:
    return isinstance(error, AirflowApiError) and error.transient


def end_orphans(
    airflow_home: Path,
    airflow: AirflowClient,
    api: k8s.CoreV1Api,
    dag_id: str,
    namespaces: list[str],
) -> list[str]:
    """Fails the unfinished runs of dead replays and removes their pods; returns the run ids."""
    folder = markers_dir(airflow_home)
    ended = []
    for marker in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        claim = json.loads(marker.read_text())
        if start_time(claim["pid"]) == claim["started"]:
            continue
        run_id = claim["run_id"]
        if end_run(airflow, api, dag_id, namespaces, run_id):
            marker.unlink(missing_ok=True)
            ended.append(run_id)
    if ended:
        say(f"    ended {len(ended)} run(s) of killed replays: {', '.join(ended)}")
    return ended
