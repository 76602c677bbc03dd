"""The evidence a failed scenario leaves for a person: task logs, pods, events, Airflow's logs.

``write_bundle`` fills ``<report dir>/forensics/``; every part that cannot be collected says why
in its own file instead of stopping the rest (failed pods are kept by the pipeline's
``on_finish_action`` until the bundle is written; ``harness.runs.remove_pods`` removes them).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from kubernetes import client as k8s

from harness import processes
from harness.airflow.server import COMPONENTS
from harness.scenarios.outcome import task_key
from harness.stack import PIPELINE_DAG_ID, RunningStack, stack_state
from harness.steps import say

AIRFLOW_LOG_LINES = 300


def write_bundle(
    report_dir: Path,
    running: RunningStack,
    api: k8s.CoreV1Api,
    run_id: str,
    mismatches: list[str],
    pod_names: list[str],
) -> Path:
    """Writes the forensic bundle of ``run_id`` (whose pods were ``pod_names``); returns it."""
    bundle = report_dir / "forensics"
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "mismatches.txt").write_text("\n".join(mismatches) + "\n")
    for name, collect in (
        ("task-logs", lambda: _task_logs(bundle / "task-logs", running, run_id)),
        ("pods.txt", lambda: _describe_pods(bundle / "pods.txt", running, api, run_id, pod_names)),
        ("airflow-logs", lambda: _airflow_logs(bundle / "airflow-logs", running)),
    ):
        try:
            collect()
        except Exception as error:  # one missing part must not hide the others
            (bundle / f"{name}.error.txt").write_text(f"could not collect {name}: {error}\n")
    say(f"    forensic bundle: {bundle}")
    return bundle


def _task_logs(folder: Path, running: RunningStack, run_id: str) -> None:
    folder.mkdir(exist_ok=True)
    airflow = running.client()
    for ti in airflow.task_instances(PIPELINE_DAG_ID, run_id):
        for attempt in range(1, (ti.get("try_number") or 0) + 1):
            text = airflow.task_log(
                PIPELINE_DAG_ID, run_id, ti["task_id"], attempt, ti.get("map_index", -1)
            )
            (folder / f"{task_key(ti)}.try{attempt}.log").write_text(text)


def _describe_pods(
    path: Path, running: RunningStack, api: k8s.CoreV1Api, run_id: str, pod_names: list[str]
) -> None:
    """``kubectl describe`` of the run's pods that still exist, and every event about its pods."""
    kubeconfig = str(running.cluster.info.admin_kubeconfig)
    parts = []
    kubectl = shutil.which("kubectl")
    for namespace in running.cluster.airflow.namespaces:
        if kubectl:
            command = [kubectl, "--kubeconfig", kubeconfig, "-n", namespace, "describe", "pods"]
            described = subprocess.run(
                [*command, "-l", f"run_id={run_id}"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            parts.append(f"# kubectl -n {namespace} describe pods -l run_id={run_id}\n")
            parts.append(described.stdout or described.stderr or "(no pods left)\n")
        parts.append(f"\n# events about the run's pods in {namespace}\n")
        parts.append(_events(api, namespace, set(pod_names)))
    path.write_text("".join(parts))


def _events(api: k8s.CoreV1Api, namespace: str, pod_names: set[str]) -> str:
    """Events about the run's pods, also those already deleted (events outlive them)."""
    lines = []
    for event in api.list_namespaced_event(namespace).items:
        involved = event.involved_object
        if involved.kind == "Pod" and involved.name in pod_names:
            lines.append(
                f"{event.last_timestamp or event.event_time} {involved.name} {event.type} "
                f"{event.reason}: {event.message}"
            )
    return "\n".join(lines) + "\n"


def _airflow_logs(folder: Path, running: RunningStack) -> None:
    folder.mkdir(exist_ok=True)
    state = stack_state(running.cluster.info.name)
    for component in COMPONENTS:
        log = processes.log_path(state, component)
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()[-AIRFLOW_LOG_LINES:]
            (folder / f"{component}.log").write_text("\n".join(lines) + "\n")
