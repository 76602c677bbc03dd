"""Disruptions the harness causes while a run goes: a trial's pod evicted mid-training, its
node lost, its GPU failed, S3 or MLflow failing the run's requests, and the GPU capacity the
scenario sets.

The eviction goes through the Kubernetes Eviction API, as ``kubectl drain`` does. A lost node is
real: the cluster provider kills the node's kubelet and its pods' containers, Kubernetes marks
the node NotReady, and the provider brings it back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol, Self

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from harness.cluster import gpus
from harness.cluster.device_plugin.topology import HEALTHY, UNHEALTHY
from harness.cluster.gpu_capacity import allocatable, is_ready
from harness.cluster.provider import ClusterInfo, NodeLossUnsupported
from harness.pipeline_settings import PIPELINE
from harness.scenarios.model import ServiceFault
from harness.scenarios.pods import TRAINER_CONTAINER, PodRecord, PodRecorder
from harness.services.fault_proxy import FaultRule, remove_rule, write_rule
from harness.services.proxies import FaultProxies
from harness.steps import say
from ml_pipeline.task_ids import POD_TASK_IDS

# Long enough after the trainer starts to be in the middle of its work, not before it.
_ACT_AFTER_RUNNING_SECONDS = 3.0
_POLL_SECONDS = 0.5
_NOT_STARTED = (None, "none", "scheduled", "upstream_failed", "skipped", "removed")


class _FirstTryDisruption:
    """Does something to the first try's pod of each pending task key once its trainer has
    started, in a thread of its own while the block runs; what never happened is an error."""

    _not_done = "nothing was done"
    _join_seconds = 10.0

    def __init__(self, recorder: PodRecorder, pending: Mapping[str, Any]) -> None:
        self._recorder = recorder
        self._pending = dict(pending)
        self.errors: list[str] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._act_when_due, daemon=True, name=type(self).__name__
        )

    def __enter__(self) -> Self:
        if self._pending:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._join_seconds)
        for key in sorted(self._pending):
            self.errors.append(f"{key}: its first pod never ran, so {self._not_done}")

    def _act_when_due(self) -> None:
        while self._pending and not self._stopping.wait(_POLL_SECONDS):
            for record in self._recorder.records():
                running = record.started is not None and record.finished is None
                if record.key in self._pending and record.try_number == 1 and running:
                    self._stopping.wait(_ACT_AFTER_RUNNING_SECONDS)
                    self._act(record, self._pending.pop(record.key))
                    break

    def _act(self, record: PodRecord, detail: Any) -> None:
        raise NotImplementedError


class Evictions(_FirstTryDisruption):
    """Evicts the first try's pod of each task key in ``keys`` once its trainer has started."""

    _not_done = "it was not evicted"

    def __init__(self, api: k8s.CoreV1Api, recorder: PodRecorder, keys: Iterable[str]) -> None:
        super().__init__(recorder, dict.fromkeys(keys))
        self._api = api
        self.evicted: list[str] = []

    def _act(self, record: PodRecord, detail: Any) -> None:
        self._evict(record.name, record.namespace)
        self.evicted.append(record.name)

    def _evict(self, name: str, namespace: str) -> None:
        # policy/v1 from Kubernetes 1.22; the local-up cluster (1.20) serves only v1beta1.
        for version in ("policy/v1", "policy/v1beta1"):
            body = {
                "apiVersion": version,
                "kind": "Eviction",
                "metadata": {"name": name, "namespace": namespace},
            }
            try:
                self._api.create_namespaced_pod_eviction(name, namespace, body)
                return
            except ApiException as error:
                problem = f"evicting pod {name} ({version}): {error.status} {error.reason}"
        self.errors.append(problem)


class ContainerControl(Protocol):
    """What kills one container of a pod (the cluster provider: its nodes' runtimes)."""

    def kill_container(self, node: str, pod_uid: str, container: str) -> bool: ...


class GpuFailures(_FirstTryDisruption):
    """Fails the GPUs under each task key's first-try pod once its trainer has started, as an
    XID 79 (a GPU fallen off the bus) does: they turn Unhealthy in the node's device plugin, so
    the kubelet hands them out no more, and the trainer's container is killed.

    ``failures`` maps task keys to how long the GPUs stay Unhealthy (None: until the block
    ends); every failed GPU is Healthy again after the block. ``failed`` says what happened.
    """

    _not_done = "its GPU did not fail"

    def __init__(
        self,
        api: k8s.CoreV1Api,
        info: ClusterInfo,
        recorder: PodRecorder,
        failures: Mapping[str, float | None],
        runtime: ContainerControl,
        show: Callable[[str], None],
    ) -> None:
        super().__init__(recorder, failures)
        self._api = api
        self._info = info
        self._runtime = runtime
        self._show = show
        self._started = time.monotonic()
        # One topology write at a time (a healing timer and a failure read-modify-write it).
        self._lock = threading.Lock()
        self._unhealthy: dict[tuple[str, ...], str] = {}
        self.failed: list[dict[str, Any]] = []

    def _act(self, record: PodRecord, seconds: float | None) -> None:
        devices = tuple(record.devices or ())
        if record.finished is not None:
            self.errors.append(f"{record.key}: {record.name} ended before its GPU could fail")
            return
        if not devices or record.node is None:
            self.errors.append(f"{record.key}: the kubelet's record shows no GPU of {record.name}")
            return
        with self._lock:
            gpus.set_health(self._info, record.node, set(devices), UNHEALTHY)
            self._unhealthy[devices] = record.node
        # Known to the scheduler before the retry asks: no retry admitted onto the dead GPU.
        self._wait_devices(record.node)
        killed = self._runtime.kill_container(record.node, record.uid, TRAINER_CONTAINER)
        if not killed:
            self.errors.append(f"{record.key}: {record.name}'s trainer was not running to kill")
        at = time.monotonic() - self._started
        self._show(f"GPU {', '.join(devices)} of {record.key} failed ({record.name} killed)")
        self.failed.append(
            {"task": record.key, "pod": record.name, "node": record.node,
             "devices": list(devices), "failed_at_seconds": round(at, 1),
             "unhealthy_seconds": seconds}
        )  # fmt: skip
        if seconds is not None:
            timer = threading.Timer(seconds, self._heal, args=(devices,))
            timer.daemon = True
            timer.start()

    def _heal(self, devices: tuple[str, ...]) -> None:
        with self._lock:
            node = self._unhealthy.pop(devices, None)
            if node is None:
                return
            gpus.set_health(self._info, node, set(devices), HEALTHY)
        self._wait_devices(node)
        self._show(f"GPU {', '.join(devices)} is Healthy again")

    def _wait_devices(self, node: str) -> None:
        try:
            gpus.wait_devices(self._api, self._info.name, node)
        except RuntimeError as error:
            self.errors.append(str(error))

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__(*exc_info)
        with self._lock:
            left = list(self._unhealthy)
        for devices in left:
            self._heal(devices)


class NodeControl(Protocol):
    """What takes a node away and brings it back (the cluster provider)."""

    def stop_node(self, node: str) -> None: ...

    def start_node(self, node: str) -> None: ...


# How long a lost node may take to be marked NotReady: the node lifecycle controller's grace
# period (40 s by default) and its next check.
_NOT_READY_WITHIN_SECONDS = 120.0


def node_ready(api: k8s.CoreV1Api, node: str) -> bool:
    """Whether the node's Ready condition is True now."""
    return is_ready(api.read_node(node))


class NodeLosses(_FirstTryDisruption):
    """Takes away the node of each task key's first-try pod once its trainer has started.

    ``losses`` maps task keys to the seconds their node stays away, at least: it comes back
    once those have passed and Kubernetes has marked it NotReady (so the loss was seen), or at
    the end of the block, whatever happened. ``lost`` says what happened, for the outcome.
    """

    _not_done = "its node was not taken away"
    # Long enough for a node brought back at the end of the block to become Ready.
    _join_seconds = 300.0

    def __init__(
        self,
        api: k8s.CoreV1Api,
        recorder: PodRecorder,
        losses: Mapping[str, float],
        nodes: NodeControl,
        show: Callable[[str], None] = lambda line: None,
    ) -> None:
        super().__init__(recorder, losses)
        self._api, self._nodes, self._show = api, nodes, show
        self._down: str | None = None
        self.lost: list[dict[str, Any]] = []

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__(*exc_info)
        if self._down is not None:  # the thread could not bring it back: try once more here
            self._bring_back(self._down)

    def _act(self, record: PodRecord, detail: Any) -> None:
        if record.node is None:
            self.errors.append(f"{record.key}: pod {record.name} runs on no known node")
        else:
            self._lose(record.key, record.node, detail)

    def _lose(self, key: str, node: str, seconds: float) -> None:
        self._down = node  # from here on, whatever happens, the node is brought back
        try:
            self._nodes.stop_node(node)
        except NodeLossUnsupported as error:  # nothing was done (e.g. an existing cluster)
            self._down = None
            self.errors.append(f"{key}: could not take node {node} away: {error}")
            return
        except Exception as error:
            self.errors.append(f"{key}: taking node {node} away failed: {error}")
            self._bring_back(node)
            return
        lost_at = time.monotonic()
        self._show(f"node {node} taken away: its kubelet and containers killed ({key} ran there)")
        loss: dict[str, Any] = {
            "task": key,
            "node": node,
            "not_ready_after": None,
            "lost_at": datetime.now(UTC).isoformat(),
        }
        self.lost.append(loss)
        # The node stays away until it has been seen NotReady and ``seconds`` have passed; the
        # end of the block cuts that short.
        while not self._stopping.is_set():
            away = time.monotonic() - lost_at
            if loss["not_ready_after"] is None and not self._ready(node):
                loss["not_ready_after"] = round(away, 1)
            if loss["not_ready_after"] is not None and away >= seconds:
                break
            if away >= seconds + _NOT_READY_WITHIN_SECONDS:
                self.errors.append(
                    f"{key}: node {node} was still Ready {away:.0f} s after it was taken away"
                )
                break
            self._stopping.wait(1.0)
        loss["back_after"] = round(time.monotonic() - lost_at, 1)
        # When its kubelet starts again: a pod bound to the node before is admitted at once.
        loss["back_at"] = datetime.now(UTC).isoformat()
        self._bring_back(node)
        if self._down is None:
            self._show(
                f"node {node} back and Ready (NotReady after {loss['not_ready_after']} s, "
                f"brought back after {loss['back_after']} s)"
            )

    def _ready(self, node: str) -> bool:
        try:
            return node_ready(self._api, node)
        except ApiException:
            return True  # unknown: not seen NotReady yet

    def _bring_back(self, node: str) -> None:
        try:
            self._nodes.start_node(node)
        except Exception as error:
            self.errors.append(f"node {node} did not come back: {error}")
        else:
            self._down = None


class ServiceOutages:
    """Puts a scenario's service faults in force once their ``from_task`` has started.

    Each fault is a rule of the stack's fault proxy scoped to this replay's data prefix (S3) or
    model name (MLflow), removed when the run ends. An S3 fault from a pod task is armed before
    the run is triggered, dormant in the proxy until that task's first request (its pod names
    the task in its User-Agent): a pod reads S3 within a second of starting, sooner than any
    poll could notice. The others (MLflow, or a task of Airflow's own) are armed on the
    progress poll, once their task has left the scheduler's hands.
    """

    def __init__(
        self,
        proxies: FaultProxies,
        faults: Iterable[ServiceFault],
        run_id: str,
        scope: dict[str, str],
    ) -> None:
        self._proxies, self._run_id, self._scope = proxies, run_id, scope
        self._pending = dict(enumerate(faults))
        self._written: list[tuple[str, str]] = []
        self.started: list[str] = []

    def __enter__(self) -> ServiceOutages:
        for index, fault in list(self._pending.items()):
            if fault.service == "s3" and fault.from_task in POD_TASK_IDS:
                self._arm(index, fault, begins_with=f"app/{fault.from_task}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        for service, name in self._written:
            remove_rule(self._proxies.rules_dir(service), name)

    @property
    def errors(self) -> list[str]:
        """Faults that never began because their task never started."""
        return [
            f"the {fault.service} fault never began: {fault.from_task} never started"
            for fault in self._pending.values()
        ]

    def on_progress(self, task_instances: list[dict[str, Any]]) -> None:
        """Starts the faults whose task has left the scheduler's hands (queued or later)."""
        begun = {ti["task_id"] for ti in task_instances if ti.get("state") not in _NOT_STARTED}
        for index, fault in list(self._pending.items()):
            if fault.from_task in begun:
                self._arm(index, fault)

    def _arm(self, index: int, fault: ServiceFault, begins_with: str | None = None) -> None:
        name = f"{self._run_id}-{index}"
        scope = self._scope[fault.service]
        rule = FaultRule(scope, fault.fault, fault.seconds, fault.requests, begins_with)
        write_rule(self._proxies.rules_dir(fault.service), name, rule)
        self._written.append((fault.service, name))
        self.started.append(f"{fault.service} {fault.fault} from {fault.from_task}")
        del self._pending[index]


@contextmanager
def gpu_capacity(
    api: k8s.CoreV1Api,
    info: ClusterInfo,
    wanted: int | None,
    replicas: int | None = None,
    resource: str | None = None,
) -> Iterator[int]:
    """The GPU nodes' capacity while the scenario runs (``wanted`` GPUs, each handed out
    ``replicas`` times where time-sliced, or as one instance of the MIG profile ``resource``;
    restored afterwards): what the scheduler may hand out."""
    default = PIPELINE.gpu_resource_name
    resource = resource or default
    nodes = info.gpu_nodes
    before = {node: allocatable(api, node, default) for node in nodes}
    unchanged = not replicas and resource == default
    if wanted is None or (unchanged and all(count == wanted for count in before.values())):
        yield min(before.values(), default=0)
        return
    sliced = f" x {replicas} time-slices" if replicas else ""
    sliced += f" as {resource}" if resource != default else ""
    say(f"    GPU capacity {wanted}{sliced} on {', '.join(nodes)} for this scenario (was {before})")
    with gpus.count_held(info, api, resource, wanted, replicas or 1):
        yield wanted * (replicas or 1)
