"""Every pod of one DAG run, watched while it runs.

The pipeline deletes succeeded pods (``on_finish_action``), so what happened to them is known only
to someone who watched: ``PodRecorder`` watches the pipeline's namespaces for the run's label and
keeps each pod's node, GPU request, phase, exit code, start and end, and why it was Pending.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

# The KubernetesPodOperator's name for the pod's main container (the trainer's).
TRAINER_CONTAINER = "base"
# A watch ends after this long without events and is started again.
_WATCH_SECONDS = 30


@dataclass
class PodRecord:
    """What one pod did, as the scenario report shows it."""

    name: str
    namespace: str
    task_id: str
    map_index: int
    try_number: int
    gpus: int
    node: str | None = None
    phase: str = "Pending"
    exit_code: int | None = None
    reason: str | None = None
    # The pod's own reason, from its status: Evicted, UnexpectedAdmissionError, OutOfcpu, ...
    status_reason: str | None = None
    created: datetime | None = None
    # When the scheduler bound it to a node (the PodScheduled condition turning True).
    scheduled: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None
    pending_reasons: list[str] = field(default_factory=list)
    # Why the trainer's container waited (ErrImageNeverPull, ImagePullBackOff, ...), in order.
    waiting_reasons: list[str] = field(default_factory=list)
    deleted: bool = False
    # When the watch first saw its deletion asked for (this host's clock: the pod operator
    # deletes a pod once it has read its logs and XCom).
    deletion_seen: datetime | None = None
    # The GPU devices the kubelet gave it ([] until seen; None: the cluster allocates none).
    devices: list[str] | None = None
    uid: str = ""

    @property
    def wait_seconds(self) -> float | None:
        """How long the pod waited to be scheduled (for a GPU, when one was busy)."""
        if self.created is None or self.scheduled is None:
            return None
        return max(0.0, (self.scheduled - self.created).total_seconds())

    @property
    def rejected_at_admission(self) -> bool:
        """Whether its node's kubelet refused it at admission: Failed, no container ever ran."""
        reason = self.status_reason or ""
        refused = reason == "UnexpectedAdmissionError" or reason.startswith("OutOf")
        return refused and self.phase == "Failed" and self.started is None

    @property
    def key(self) -> str:
        """``task_id`` or ``task_id[i]``, as scenario expectations name tasks."""
        return self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"

    def as_json(self) -> dict[str, Any]:
        """The record with times as ISO strings."""
        values = asdict(self)
        for name in ("created", "scheduled", "started", "finished", "deletion_seen"):
            values[name] = values[name].isoformat() if values[name] else None
        values["wait_seconds"] = self.wait_seconds
        return {**values, "key": self.key}


def gpu_request(pod: k8s.V1Pod, resource: str) -> int:
    """How many of ``resource`` the pod's containers ask for (limits; requests equal them)."""
    total = 0
    for container in pod.spec.containers or []:
        resources = container.resources
        limits = (resources.limits if resources else None) or {}
        total += int(limits.get(resource, 0))
    return total


def _update(record: PodRecord, pod: k8s.V1Pod) -> None:
    record.node = pod.spec.node_name or record.node
    record.phase = pod.status.phase or record.phase
    record.status_reason = pod.status.reason or record.status_reason
    record.created = pod.metadata.creation_timestamp or record.created
    for condition in pod.status.conditions or []:
        unscheduled = condition.type == "PodScheduled" and condition.status == "False"
        if unscheduled and condition.message and condition.message not in record.pending_reasons:
            record.pending_reasons.append(condition.message)
        if condition.type == "PodScheduled" and condition.status == "True":
            record.scheduled = condition.last_transition_time or record.scheduled
    # The first container is the trainer's (the xcom sidecar comes second).
    statuses = [s for s in pod.status.container_statuses or [] if s.name == TRAINER_CONTAINER]
    state = statuses[0].state if statuses else None
    waiting = state.waiting if state else None
    if waiting and waiting.reason and waiting.reason not in record.waiting_reasons:
        record.waiting_reasons.append(waiting.reason)
    if state and state.running:
        record.started = state.running.started_at
    if state and state.terminated:
        record.started = state.terminated.started_at or record.started
        record.finished = state.terminated.finished_at
        record.exit_code = state.terminated.exit_code
        record.reason = state.terminated.reason


class PodRecorder:
    """Records the pods labelled with ``run_id`` in ``namespaces`` from start until ``stop``."""

    def __init__(
        self,
        api: k8s.CoreV1Api,
        namespaces: list[str],
        run_label: str,
        gpu_resource: str,
        devices_of: Callable[[str], list[str]] | None = None,
    ) -> None:
        self._api = api
        self._devices_of = devices_of
        self._namespaces = namespaces
        self._selector = f"run_id={run_label}"
        self._gpu_resource = gpu_resource
        self._records: dict[str, PodRecord] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch, args=(ns,), daemon=True, name=f"pods-{ns}")
            for ns in namespaces
        ]
        self.errors: list[str] = []

    def __enter__(self) -> PodRecorder:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stops recording; a last listing catches what the watch had not delivered yet."""
        self._stopping.set()
        for namespace in self._namespaces:
            try:
                listed = self._api.list_namespaced_pod(namespace, label_selector=self._selector)
            except (ApiException, HTTPError) as error:
                self.errors.append(f"listing pods in {namespace}: {error}")
                continue
            for pod in listed.items:
                self._seen(pod, deleted=False)
        # The watches end at their next event or time-out (daemon threads): not waited for.

    def records(self) -> list[PodRecord]:
        """The pods seen so far, oldest first."""
        with self._lock:
            return sorted(self._records.values(), key=lambda r: (r.created or datetime.min, r.name))

    def _watch(self, namespace: str) -> None:
        version = None
        while not self._stopping.is_set():
            try:
                stream = watch.Watch().stream(
                    self._api.list_namespaced_pod,
                    namespace,
                    label_selector=self._selector,
                    resource_version=version,
                    timeout_seconds=_WATCH_SECONDS,
                )
                for event in stream:
                    pod = event["object"]
                    if self._stopping.is_set():
                        return
                    version = pod.metadata.resource_version
                    self._seen(pod, deleted=event["type"] == "DELETED")
            except ApiException as error:
                # 410 Gone: the resource version is too old; list afresh.
                version = None
                if error.status != 410:
                    self.errors.append(f"watching pods in {namespace}: {error.reason}")
                    self._stopping.wait(2)
            except HTTPError as error:
                self.errors.append(f"watching pods in {namespace}: {error}")
                self._stopping.wait(2)

    def _seen(self, pod: k8s.V1Pod, deleted: bool) -> None:
        labels = pod.metadata.labels or {}
        with self._lock:
            record = self._records.get(pod.metadata.uid)
            if record is None:
                record = PodRecord(
                    name=pod.metadata.name,
                    namespace=pod.metadata.namespace,
                    task_id=labels.get("task_id", "?"),
                    map_index=int(labels.get("map_index", -1)),
                    try_number=int(labels.get("try_number", 0)),
                    gpus=gpu_request(pod, self._gpu_resource),
                    uid=pod.metadata.uid,
                )
                if self._devices_of is not None and record.gpus:
                    record.devices = []
                self._records[pod.metadata.uid] = record
            _update(record, pod)
            record.deleted = record.deleted or deleted
            if record.deletion_seen is None and (deleted or pod.metadata.deletion_timestamp):
                record.deletion_seen = datetime.now(UTC)
            # Allocated before its containers start, kept while the pod is active.
            if record.devices == [] and record.started and not deleted:
                record.devices = self._devices_of(pod.metadata.uid)


def max_concurrent(records: list[PodRecord], now: datetime) -> int:
    """The most of ``records`` whose containers ran at the same moment."""
    edges = []
    for record in records:
        if record.started:
            edges.append((record.started, 1))
            edges.append((record.finished or now, -1))
    # An end and a start at the same instant do not overlap: ends sort first.
    running = peak = 0
    for _, change in sorted(edges):
        running += change
        peak = max(peak, running)
    return peak
