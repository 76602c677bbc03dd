"""Disruptions the harness causes while a run goes: a trial's pod evicted mid-training, and
S3 or MLflow failing the run's requests.

The eviction goes through the Kubernetes Eviction API, as ``kubectl drain`` and the node
lifecycle controller do, so the pod is deleted the way a drained or lost node deletes it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from harness.scenarios.model import ServiceFault
from harness.scenarios.pods import PodRecorder
from harness.services.fault_proxy import FaultRule, remove_rule, write_rule
from harness.services.proxies import FaultProxies

# Long enough after the trainer starts to be in the middle of its work, not before it.
_EVICT_AFTER_RUNNING_SECONDS = 3.0
_POLL_SECONDS = 0.5
_NOT_STARTED = (None, "none", "scheduled", "upstream_failed", "skipped", "removed")


class Evictions:
    """Evicts the first try's pod of each task key in ``keys`` once its trainer has started."""

    def __init__(self, api: k8s.CoreV1Api, recorder: PodRecorder, keys: Iterable[str]) -> None:
        self._api, self._recorder = api, recorder
        self._pending = set(keys)
        self.evicted: list[str] = []
        self.errors: list[str] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._evict_when_due, daemon=True, name="evict")

    def __enter__(self) -> Evictions:
        if self._pending:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for key in sorted(self._pending):
            self.errors.append(f"{key}: its first pod never ran, so it was not evicted")

    def _evict_when_due(self) -> None:
        while self._pending and not self._stopping.wait(_POLL_SECONDS):
            for record in self._recorder.records():
                running = record.started is not None and record.finished is None
                if record.key in self._pending and record.try_number == 1 and running:
                    self._stopping.wait(_EVICT_AFTER_RUNNING_SECONDS)
                    self._evict(record.name, record.namespace)
                    self._pending.discard(record.key)
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


class ServiceOutages:
    """Puts a scenario's service faults in force once their ``from_task`` has started.

    Called with every progress poll of the run; each fault is a rule of the stack's fault proxy
    scoped to this replay's data prefix (S3) or model name (MLflow), removed when the run ends.
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
            if fault.from_task not in begun:
                continue
            name = f"{self._run_id}-{index}"
            rule = FaultRule(self._scope[fault.service], fault.fault, fault.seconds)
            write_rule(self._proxies.rules_dir(fault.service), name, rule)
            self._written.append((fault.service, name))
            self.started.append(f"{fault.service} {fault.fault} from {fault.from_task}")
            del self._pending[index]
