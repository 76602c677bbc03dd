"""Replays whose process died (``kill -9``, a lost CI runner): the next ``up`` ends their runs.

A replay claims its run with a marker in the stack's state folder naming its process. Airflow
would otherwise go on with a run nobody reads, its pods holding the GPU node's capacity. ``down``
needs none of this: it removes Airflow, the cluster and the markers with the state folder.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes import client as k8s

from harness.airflow.client import AirflowApiError, AirflowClient
from harness.processes import start_time
from harness.scenarios.forensics import remove_pods
from harness.steps import say

_UNFINISHED = ("queued", "running")


def markers_dir(airflow_home: Path) -> Path:
    """Where the replays of the stack whose Airflow lives in ``airflow_home`` leave markers."""
    return airflow_home.parent / "replays"


@contextmanager
def claimed(airflow_home: Path, run_id: str) -> Iterator[None]:
    """Marks ``run_id`` as this process's for as long as the block runs."""
    folder = markers_dir(airflow_home)
    folder.mkdir(parents=True, exist_ok=True)
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
    folder = markers_dir(airflow_home)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder.parent / "cluster.lock").open("a") as lock:
        if alone:
            show("    waiting for the other replays to end: this scenario changes the cluster")
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def end_run(
    airflow: AirflowClient, api: k8s.CoreV1Api, dag_id: str, namespaces: list[str], run_id: str
) -> bool:
    """Fails ``run_id`` if it has not finished and removes its pods; False if Airflow refused."""
    try:
        if airflow.dag_run(dag_id, run_id)["state"] in _UNFINISHED:
            airflow.set_run_state(dag_id, run_id, "failed")
    except AirflowApiError as error:
        if error.status != 404:
            say(f"    could not end run {run_id}: {error}")
            return False
    remove_pods(api, namespaces, run_id)
    return True


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
