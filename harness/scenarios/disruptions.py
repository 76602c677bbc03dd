"""Disruptions the harness causes while a run goes: evicting a trial's pod mid-training.

The eviction goes through the Kubernetes Eviction API, as ``kubectl drain`` and the node
lifecycle controller do, so the pod is deleted the way a drained or lost node deletes it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from harness.scenarios.pods import PodRecorder

# Long enough after the trainer starts to be in the middle of its work, not before it.
_EVICT_AFTER_RUNNING_SECONDS = 3.0
_POLL_SECONDS = 0.5


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
