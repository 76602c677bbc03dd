"""The pipeline's pod operators: KubernetesPodOperator that leaves no pod behind to run later.

A pod task waits for its pod to be placed on a node (``schedule_timeout_seconds``) and then to
start (``startup_timeout_seconds``). When a try gives up while its pod has not finished, the
provider keeps that pod unless ``on_finish_action`` deletes every pod; the scheduler would place it
later (or it runs on) and it would train as an orphan, holding a GPU the task's retry waits for.
``PipelinePodOperator`` deletes such a pod, and makes a pod again, within the same try, when the
node's kubelet rejected it at admission (none of its containers ran). ``TrialPodOperator`` also
fails a trial at once, with no retry, when no node could ever meet its GPU request, instead of
letting it wait out the schedule timeout on every try.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import KubernetesApiException
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.pod_manager import OnFinishAction, PodPhase
from airflow.providers.common.compat.sdk import AirflowException, AirflowSkipException
from airflow.sdk.exceptions import AirflowFailException
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity
from urllib3.exceptions import HTTPError


class PipelinePodOperator(KubernetesPodOperator):
    """A KubernetesPodOperator that leaves no pod behind whose trainer has not ended, and does
    not retry failures that a retry would only repeat.

    When a try ends while its pod's trainer container has not terminated (the pod was never
    placed, placed but not started, or started just as the task gave up), the pod is deleted
    whatever ``on_finish_action`` says: nobody reads what it does any more, and it would hold a
    GPU the task's retry waits for. A pod whose trainer ended is kept or deleted as
    ``on_finish_action`` says. A trainer exit code in ``fail_fast_exit_codes`` fails the task
    without its retries (e.g. deploy's 6: the champion moved since the evaluation).

    A pod the node's kubelet rejected at admission failed before any of its containers ran:
    e.g. ``UnexpectedAdmissionError`` when the node restarted and its kubelet admitted the pod
    before the GPU device plugin had registered again, or ``OutOf<resource>`` when the kubelet's
    count differed from the scheduler's. Nothing was trained or lost, and the next pod is
    usually admitted, so the pod is made again within this try, up to ``admission_retries``
    times, ``admission_retry_delay_seconds`` apart; the task's retries stay for the trainer's
    failures.

    :param fail_fast_exit_codes: trainer exit codes that end the task without a retry.
    :param admission_retries: how many times a try makes its pod again after a rejection at
        admission (0: never; the rejection fails the try).
    :param admission_retry_delay_seconds: the wait before each new pod.
    """

    def __init__(
        self,
        *,
        fail_fast_exit_codes: tuple[int, ...] = (),
        admission_retries: int = 0,
        admission_retry_delay_seconds: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fail_fast_exit_codes = tuple(fail_fast_exit_codes)
        self.admission_retries = admission_retries
        self.admission_retry_delay_seconds = admission_retry_delay_seconds
        # The last pod as read after the kubelet rejected it at admission, and why; None if
        # it did not.
        self._rejected_at_admission: tuple[k8s.V1Pod, str] | None = None
        self._admission_remakes = 0
        self._pod_started = False

    def execute_sync(self, context: Any) -> Any:
        """The provider's run of the pod; made again after a rejection at admission."""
        self._admission_remakes = 0
        while True:
            self._pod_started = False
            try:
                return super().execute_sync(context)
            except AirflowException as error:
                if not self._make_again_after(error):
                    raise
            # A fresh request (a new name): the rejected pod is gone, nothing reattaches to it.
            self.pod = self.pod_request_obj = self.remote_pod = None

    def _make_again_after(self, error: AirflowException) -> bool:
        """Whether this try makes its pod again after ``error``: the pod was rejected at
        admission and never started, the try goes on (not killed, no timeout or skip), and
        admission_retries allow one more. Deletes the rejected pod and waits first."""
        rejected = self._rejected_at_admission
        if isinstance(error, (AirflowSkipException, AirflowFailException)) or rejected is None:
            return False
        # A timeout or a kill (BaseExceptions) may hide behind the cleanup's failure.
        interrupted = isinstance(error.__context__, BaseException) and not isinstance(
            error.__context__, Exception
        )
        if self._killed or interrupted or self._pod_started:
            return False
        pod, why = rejected
        node = pod.spec.node_name if pod.spec else None
        if self._admission_remakes >= self.admission_retries:
            self.log.error(
                "Pod %s was rejected at admission by node %s (%s), as were the %d pod(s) made "
                "before it in this try; no more are made (admission_retries: %d).",
                pod.metadata.name,
                node,
                why,
                self._admission_remakes,
                self.admission_retries,
            )
            return False
        self._admission_remakes += 1
        self.log.warning(
            "Pod %s was rejected at admission by the kubelet of node %s (%s): none of its "
            "containers ran, so nothing was lost. Making the pod again in this try in %s s "
            "(%d of %d); the task's retries are left for the trainer's failures.",
            pod.metadata.name,
            node,
            why,
            self.admission_retry_delay_seconds,
            self._admission_remakes,
            self.admission_retries,
        )
        # It holds nothing, and its reason is in this log; left, it would be reattached to
        # where its checked label could not be set.
        try:
            self.pod_manager.delete_pod(pod)
        except (ApiException, KubernetesApiException, HTTPError):
            self.log.exception("Could not delete the rejected pod %s", pod.metadata.name)
        time.sleep(self.admission_retry_delay_seconds)
        return not self._killed

    def await_pod_start(self, pod: k8s.V1Pod) -> None:
        """The provider's wait; notes that the pod started (a later failure is no rejection
        at admission, whatever its status says after a kubelet restart)."""
        super().await_pod_start(pod)
        self._pod_started = True

    def cleanup(self, pod: k8s.V1Pod, remote_pod: k8s.V1Pod, *args: Any, **kwargs: Any) -> Any:
        """The provider's cleanup; a failure with a fail-fast exit code is not retried.

        The pod is read again first (``remote_pod`` may be as it was right after creation),
        so that a rejection at admission is known whatever ``on_finish_action`` deletes.
        """
        self._rejected_at_admission = None
        if remote_pod is not None and not self._killed:
            current = self._current_state(pod)
            why = _admission_rejection(current)
            self._rejected_at_admission = (current, why) if why else None
        try:
            return super().cleanup(pod, remote_pod, *args, **kwargs)
        except (AirflowSkipException, AirflowFailException):
            raise
        except AirflowException as error:
            code = _exit_code(remote_pod, self.base_container_name)
            if code is not None and code in self.fail_fast_exit_codes:
                raise AirflowFailException(
                    f"{error}\nThe trainer exited {code}, which a retry would only repeat: "
                    "the task fails without its retries (its log says why and what to do)."
                ) from error
            raise

    def process_pod_deletion(self, pod: k8s.V1Pod, *, reraise: bool = True) -> bool:
        """Deletes ``pod`` if its trainer has not ended, else as ``on_finish_action`` says.

        Returns whether the pod was deleted; API errors are raised only when ``reraise``.
        """
        if pod is None or self.on_finish_action == OnFinishAction.DELETE_POD:
            return super().process_pod_deletion(pod, reraise=reraise)
        current = pod
        if not self._trainer_ended(pod):
            current = self._current_state(pod)
        if current is None:
            self.log.info("Pod %s is gone already; nothing to delete.", pod.metadata.name)
            return False
        if self._trainer_ended(current):
            return super().process_pod_deletion(current, reraise=reraise)
        self.log.warning(
            "Pod %s: its trainer has not ended (%s) but this try has; deleting the pod so it "
            "does not run on as an orphan, whatever on_finish_action (%s) says.",
            pod.metadata.name,
            _where_it_is(current),
            self.on_finish_action.value,
        )
        try:
            self.pod_manager.delete_pod(pod)
        except (ApiException, KubernetesApiException, HTTPError):
            if reraise:
                raise
            self.log.exception("Could not delete the pod %s", pod.metadata.name)
            return False
        return True

    def _trainer_ended(self, pod: k8s.V1Pod) -> bool:
        """Whether the pod's trainer (base) container terminated, or the pod as a whole did."""
        if _phase(pod) in (PodPhase.SUCCEEDED, PodPhase.FAILED):
            return True
        statuses = (pod.status.container_statuses if pod.status else None) or []
        base = next((s for s in statuses if s.name == self.base_container_name), None)
        return bool(base and base.state and base.state.terminated)

    def _current_state(self, pod: k8s.V1Pod) -> k8s.V1Pod | None:
        """The pod as the API has it now (None once deleted), or ``pod`` if it cannot be read.

        The pod cleanup receives may be the one read right after creation, so it says Pending
        even when the try ended later, with the pod running.
        """
        try:
            return self.pod_manager.read_pod(pod)
        except ApiException as error:
            if error.status == 404:
                return None
            problem = f"HTTP {error.status} {error.reason}"
        except (KubernetesApiException, HTTPError) as error:
            problem = str(error)
        self.log.warning(
            "Could not read pod %s again (%s); going by its state as last read.",
            pod.metadata.name,
            problem,
        )
        return pod


class TrialPodOperator(PipelinePodOperator):
    """A trial's pod: fails the trial before making the pod if no node can ever meet its GPUs.

    The check compares the pod's request with the allocatable of each node matching the pod's
    ``node_selector``; taints and affinity are left to the scheduler. It fails the trial only when
    some matching node advertises GPUs and none advertises enough. With no such node (a node pool
    scaled to zero, nodes whose GPUs are not advertised yet) or when the nodes cannot be listed
    (the Airflow ServiceAccount may lack a ClusterRole to read nodes), it logs a warning and the
    pod waits as long as ``schedule_timeout_seconds`` allows.

    :param gpu_resource_name: the extended resource the GPUs are requested as: each trial's
        (generate_hyperparams maps it in: ``PipelineSettings.gpu_resource_name`` or its own
        ``gpu_resource``). The default serves trials of runs made before it was mapped.
    """

    def __init__(self, *, gpu_resource_name: str = "nvidia.com/gpu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gpu_resource_name = gpu_resource_name

    def get_or_create_pod(self, pod_request_obj: k8s.V1Pod, context: Any) -> k8s.V1Pod:
        """Checks that a node can meet the GPU request, then reattaches to or makes the pod.

        Not again for a pod made after a rejection at admission: the restarted kubelet that
        rejected it may advertise no GPUs until its device plugin registers again.
        """
        if not self._admission_remakes:
            self._check_a_node_can_meet_the_gpus(pod_request_obj)
        return super().get_or_create_pod(pod_request_obj, context)

    def _check_a_node_can_meet_the_gpus(self, pod: k8s.V1Pod) -> None:
        requested = sum(
            (_quantity(c.resources, self.gpu_resource_name) for c in pod.spec.containers),
            Decimal(0),
        )
        if requested == 0:
            return
        selector = dict(pod.spec.node_selector or {})
        nodes = self._nodes_matching(selector, requested)
        if nodes is None:
            return
        most, best_node = max(
            ((_allocatable(node, self.gpu_resource_name), node) for node in nodes),
            key=lambda offer: offer[0],
            default=(Decimal(0), None),
        )
        if most == 0:
            self.log.warning(
                "No node matching node_selector %s advertises %s now (%d node(s) match); going "
                "on, the pod waits for one for up to %s s (the schedule timeout).",
                selector,
                self.gpu_resource_name,
                len(nodes),
                self.schedule_timeout_seconds,
            )
        elif requested > most:
            raise AirflowFailException(
                f"Trial pod {pod.metadata.name} requests {requested} {self.gpu_resource_name}, "
                f"but the most any node matching node_selector {selector} can allocate is "
                f"{most} (node {best_node.metadata.name}), so it can never be scheduled. "
                f"Lower the `gpus` of this trial (or the gpus_per_trial setting), or add a node "
                f"with at least {requested} {self.gpu_resource_name} and those labels."
            )

    def _nodes_matching(
        self, selector: dict[str, str], requested: Decimal
    ) -> list[k8s.V1Node] | None:
        """The nodes with all of ``selector``'s labels; None (with a warning) if unreadable."""
        label_selector = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
        try:
            return self.client.list_node(label_selector=label_selector).items
        except (ApiException, HTTPError) as error:
            why = (
                f"HTTP {error.status} {error.reason}" if isinstance(error, ApiException) else error
            )
            self.log.warning(
                "Could not list the nodes to check that one can meet %s %s (%s); going on "
                "unchecked, so a request no node can meet waits out the schedule timeout (%s s). "
                "To check it, let the Airflow ServiceAccount get and list nodes (a ClusterRole).",
                requested,
                self.gpu_resource_name,
                why,
                self.schedule_timeout_seconds,
            )
            return None


def _admission_rejection(pod: k8s.V1Pod | None) -> str | None:
    """``reason: message`` of a pod its node's kubelet rejected at admission, else None.

    Such a pod is Failed with no container ever started; its reason is the admit handler's:
    ``UnexpectedAdmissionError`` (the device manager) or ``OutOf<resource>`` (the kubelet's own
    count of a resource), which a new pod usually passes. An evicted pod also ends Failed, but
    after its containers ran, and its reason is ``Evicted``.
    """
    status = pod.status if pod else None
    if status is None or status.phase != PodPhase.FAILED:
        return None
    reason = status.reason or ""
    if not (reason == "UnexpectedAdmissionError" or reason.startswith("OutOf")):
        return None
    for container in status.container_statuses or []:
        state = container.state
        if container.started or (state and (state.running or state.terminated)):
            return None
    return f"{reason}: {status.message}" if status.message else reason


def _phase(pod: k8s.V1Pod) -> str | None:
    return pod.status.phase if pod.status else None


def _where_it_is(pod: k8s.V1Pod) -> str:
    node = pod.spec.node_name if pod.spec else None
    if not node:
        return "never placed on a node"
    if _phase(pod) == PodPhase.PENDING:
        return f"placed on node {node}, no container running yet"
    return f"{_phase(pod)} on node {node}"


def _exit_code(pod: k8s.V1Pod | None, container: str) -> int | None:
    statuses = (pod.status.container_statuses if pod and pod.status else None) or []
    base = next((s for s in statuses if s.name == container), None)
    terminated = base.state.terminated if base and base.state else None
    return terminated.exit_code if terminated else None


def _allocatable(node: k8s.V1Node, name: str) -> Decimal:
    return parse_quantity(((node.status and node.status.allocatable) or {}).get(name, "0"))


def _quantity(
    resources: k8s.V1ResourceRequirements | Mapping[str, Any] | None, name: str
) -> Decimal:
    """The container's limit of ``name`` (its request if no limit), 0 if it asks for none.

    ``resources`` is a plain dict where expand_kwargs supplied it (the provider passes it on
    unconverted), a V1ResourceRequirements elsewhere.
    """
    if resources is None:
        return Decimal(0)
    if isinstance(resources, Mapping):
        limits, requests = resources.get("limits"), resources.get("requests")
    else:
        limits, requests = resources.limits, resources.requests
    value = (limits or {}).get(name) or (requests or {}).get(name)
    return parse_quantity(value) if value else Decimal(0)
