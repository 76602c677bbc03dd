"""The pipeline's pod operators against a faked Kubernetes API (CoreV1Api, the boundary).

What is checked: a trial whose GPU request no node can meet fails at once and makes no pod; one
that fits, or whose check cannot be made, goes on; a pod still Pending when its try ends is
deleted whatever on_finish_action says; a pod that ran follows on_finish_action as before; a
pod the kubelet rejected at admission is made again within the try, as many times as allowed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
import structlog.testing
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

from ml_pipeline.operators import PipelinePodOperator, TrialPodOperator

GPU = "nvidia.com/gpu"
GPU_LABELS = {"gpu-type": "nvidia-a100", "node-pool": "gpu-training"}
NAMESPACE = "ml-training"


def node(name: str, gpus: int, labels: dict[str, str] = GPU_LABELS) -> k8s.V1Node:
    """A node advertising ``gpus`` allocatable GPUs."""
    return k8s.V1Node(
        metadata=k8s.V1ObjectMeta(name=name, labels=dict(labels)),
        status=k8s.V1NodeStatus(allocatable={"cpu": "8", GPU: str(gpus)}),
    )


def pod(
    name: str, phase: str, node_name: str | None = None, exit_code: int | None = None
) -> k8s.V1Pod:
    """A pod of the base container in ``phase``, placed on ``node_name`` if given; with
    ``exit_code`` its base container terminated with it."""
    statuses = None
    if exit_code is not None:
        terminated = k8s.V1ContainerStateTerminated(exit_code=exit_code)
        statuses = [
            k8s.V1ContainerStatus(
                name="base",
                image="i",
                image_id="",
                ready=False,
                restart_count=0,
                state=k8s.V1ContainerState(terminated=terminated),
            )
        ]
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, namespace=NAMESPACE, labels={}),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base")], node_name=node_name),
        status=k8s.V1PodStatus(phase=phase, container_statuses=statuses),
    )


class FakeCoreV1Api:
    """The CoreV1Api calls the operators make, over an in-memory cluster."""

    def __init__(self, nodes: list[k8s.V1Node], list_node_error: Exception | None = None):
        self.nodes = nodes
        self.list_node_error = list_node_error
        self.pods: dict[str, k8s.V1Pod] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        # The statuses the pods made next take at once, in order (then Pending).
        self.next_statuses: list[k8s.V1PodStatus] = []
        self.api_client = ApiClient()

    def list_node(self, label_selector: str = "") -> SimpleNamespace:
        if self.list_node_error:
            raise self.list_node_error
        wanted = dict(term.split("=", 1) for term in label_selector.split(",") if term)
        matching = [n for n in self.nodes if wanted.items() <= n.metadata.labels.items()]
        return SimpleNamespace(items=matching)

    def create_namespaced_pod(self, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self.pods[name] = pod(name, "Pending", node_name="gpu-a")
        self.pods[name].metadata.labels = body["metadata"]["labels"]
        if self.next_statuses:
            self.pods[name].status = self.next_statuses.pop(0)
        self.created.append(name)
        return body

    def list_namespaced_pod(self, namespace: str, label_selector: str = "") -> SimpleNamespace:
        """The pods matching ``label_selector`` (``k=v``, ``k!=v`` and ``!k`` terms)."""

        def matches(labels: dict[str, str], term: str) -> bool:
            if "!=" in term:
                key, value = term.split("!=", 1)
                return labels.get(key) != value
            if term.startswith("!"):
                return term[1:] not in labels
            key, value = term.split("=", 1)
            return labels.get(key) == value

        terms = [term for term in label_selector.split(",") if term]
        found = [p for p in self.pods.values() if all(matches(p.metadata.labels, t) for t in terms)]
        return SimpleNamespace(items=found)

    def read_namespaced_pod(self, name: str, namespace: str) -> k8s.V1Pod:
        if name not in self.pods:
            raise ApiException(status=404, reason="Not Found")
        return self.pods[name]

    def delete_namespaced_pod(self, name: str, namespace: str, **_: Any) -> None:
        self.pods.pop(name, None)
        self.deleted.append(name)

    def patch_namespaced_pod(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self.pods[name].metadata.labels.update(body["metadata"]["labels"])

    def list_namespaced_event(self, namespace: str, **_: Any) -> SimpleNamespace:
        return SimpleNamespace(items=[])


class FakeHook:
    """The KubernetesHook as the operator uses it: a client and the connection's extras."""

    is_in_cluster = False

    def __init__(self, core: FakeCoreV1Api):
        self.core_v1_client = core

    def get_namespace(self) -> None:
        return None

    def get_xcom_sidecar_container_image(self) -> None:
        return None

    def get_xcom_sidecar_container_resources(self) -> None:
        return None

    def get_xcom_sidecar_container_security_context(self) -> None:
        return None


def on_fake_cluster(operator: PipelinePodOperator, core: FakeCoreV1Api) -> PipelinePodOperator:
    operator.hook = FakeHook(core)
    return operator


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """What the operators log (structlog events: ``event`` and ``log_level``)."""
    with structlog.testing.capture_logs() as events:
        yield events


def warnings_in(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events if e["log_level"] == "warning"]


def context() -> dict[str, Any]:
    """The parts of a task's context the operator reads."""
    ti = SimpleNamespace(
        dag_id="ml_full_training_pipeline",
        task_id="hyperparameter_tuning.train_trial",
        map_index=0,
        try_number=1,
        xcom_push=lambda key, value: None,
    )
    return {"ti": ti, "run_id": "manual__2026-12-01", "dag": SimpleNamespace()}


def trial(gpus: int, **kwargs: Any) -> TrialPodOperator:
    """A trial operator asking for ``gpus`` GPUs on the GPU nodes (a V1ResourceRequirements)."""
    return TrialPodOperator(
        task_id="train_trial",
        name="train-trial",
        namespace=NAMESPACE,
        image="trainer:test",
        node_selector=GPU_LABELS,
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": "1", GPU: str(gpus)}, limits={"cpu": "1", GPU: str(gpus)}
        ),
        gpu_resource_name=GPU,
        **kwargs,
    )


def make_pod(operator: TrialPodOperator) -> k8s.V1Pod:
    """What execute does up to the pod's creation: build the request, then get or create it."""
    request = operator.build_pod_request_obj(context())
    return operator.get_or_create_pod(request, context())


def test_a_mapped_trial_whose_gpus_no_node_can_meet_fails_without_making_a_pod():
    core = FakeCoreV1Api(
        [node("gpu-a", 1), node("gpu-b", 2), node("cpu-big", 8, labels={"node-pool": "cpu"})]
    )
    # As generate_hyperparams returns it: plain data, not a V1ResourceRequirements.
    trial_pod = {
        "arguments": ["train"],
        "image": "trainer:test",
        "container_resources": {"requests": {"cpu": "1", GPU: "4"}, "limits": {GPU: "4"}},
    }
    with DAG("trials", start_date=datetime(2026, 1, 1, tzinfo=UTC), schedule=None):
        mapped = TrialPodOperator.partial(
            task_id="train_trial",
            name="train-trial",
            namespace=NAMESPACE,
            node_selector=GPU_LABELS,
            gpu_resource_name=GPU,
            do_xcom_push=True,
        ).expand_kwargs([trial_pod])
    operator = mapped.unmap(trial_pod)
    on_fake_cluster(operator, core)

    with pytest.raises(AirflowFailException) as failure:
        operator.execute(context())

    message = str(failure.value)
    assert f"requests 4 {GPU}" in message
    assert "can allocate is 2 (node gpu-b)" in message
    assert "Lower the `gpus` of this trial" in message
    assert "add a node with at least 4" in message
    assert core.created == []


def test_a_trial_whose_gpus_a_node_can_meet_makes_its_pod():
    core = FakeCoreV1Api([node("gpu-a", 1), node("gpu-b", 2)])
    operator = on_fake_cluster(trial(gpus=2), core)

    created = make_pod(operator)

    assert core.created == [created.metadata.name]


def test_forbidden_node_listing_is_a_warning_and_the_pod_is_made(logged):
    forbidden = ApiException(status=403, reason="Forbidden")
    core = FakeCoreV1Api([node("gpu-a", 1)], list_node_error=forbidden)
    operator = on_fake_cluster(trial(gpus=64), core)

    make_pod(operator)

    assert len(core.created) == 1
    (warning,) = warnings_in(logged)
    assert "Could not list the nodes" in warning
    assert "HTTP 403 Forbidden" in warning
    assert "ClusterRole" in warning


def test_no_node_advertising_gpus_yet_is_a_warning_and_the_pod_is_made(logged):
    # A GPU node pool scaled to zero: a node may come; the schedule timeout bounds the wait.
    core = FakeCoreV1Api([node("cpu-a", 0, labels={"node-pool": "cpu"})])
    operator = on_fake_cluster(trial(gpus=1), core)

    make_pod(operator)

    assert len(core.created) == 1
    (warning,) = warnings_in(logged)
    assert f"advertises {GPU} now (0 node(s) match)" in warning


def test_a_pod_without_gpus_is_not_checked():
    core = FakeCoreV1Api([], list_node_error=AssertionError("nodes listed"))
    operator = on_fake_cluster(trial(gpus=0), core)

    make_pod(operator)

    assert len(core.created) == 1


@pytest.mark.parametrize("on_finish_action", ["delete_succeeded_pod", "keep_pod"])
@pytest.mark.parametrize("node_name", [None, "gpu-a"], ids=["never-placed", "placed"])
def test_a_pod_still_pending_at_cleanup_is_deleted_whatever_on_finish_action(
    on_finish_action, node_name, logged
):
    pending = pod("train-trial-abc", "Pending", node_name=node_name)
    core = FakeCoreV1Api([])
    core.pods[pending.metadata.name] = pending
    operator = on_fake_cluster(
        PipelinePodOperator(
            task_id="validate_data",
            namespace=NAMESPACE,
            image="trainer:test",
            on_finish_action=on_finish_action,
        ),
        core,
    )

    with pytest.raises(AirflowException, match="returned a failure"):
        operator.cleanup(pod=pending, remote_pod=pending)

    assert core.deleted == ["train-trial-abc"]
    (warning,) = warnings_in(logged)
    assert "its trainer has not ended" in warning
    assert "deleting the pod so it does not run on as an orphan" in warning
    assert ("placed on node gpu-a" if node_name else "never placed on a node") in warning


def test_a_pod_seen_pending_whose_trainer_ended_since_follows_on_finish_action():
    # execute_sync's remote pod is the one read right after creation; the try may end later.
    seen = pod("train-trial-abc", "Pending")
    core = FakeCoreV1Api([])
    # The xcom sidecar keeps the pod Running a moment after the trainer exited.
    core.pods[seen.metadata.name] = pod("train-trial-abc", "Running", "gpu-a", exit_code=1)
    operator = on_fake_cluster(
        PipelinePodOperator(
            task_id="t", namespace=NAMESPACE, on_finish_action="delete_succeeded_pod"
        ),
        core,
    )

    assert operator.process_pod_deletion(seen) is False
    assert core.deleted == []


def test_a_pod_still_training_when_its_try_ends_is_deleted():
    # node_lost: the retry's pod was placed on the dead node and started as the try gave up.
    running = pod("train-trial-abc", "Running", node_name="gpu-a")
    core = FakeCoreV1Api([])
    core.pods[running.metadata.name] = running
    operator = on_fake_cluster(
        PipelinePodOperator(task_id="t", namespace=NAMESPACE, on_finish_action="keep_pod"), core
    )

    assert operator.process_pod_deletion(running) is True
    assert core.deleted == ["train-trial-abc"]


@pytest.mark.parametrize(("exit_code", "retried"), [(6, False), (1, True)])
def test_a_fail_fast_exit_code_fails_the_task_without_its_retries(exit_code, retried):
    failed = pod("deploy-model-abc", "Failed", node_name="cpu", exit_code=exit_code)
    core = FakeCoreV1Api([])
    core.pods[failed.metadata.name] = failed
    operator = on_fake_cluster(
        PipelinePodOperator(
            task_id="deploy_model", namespace=NAMESPACE, image="i", fail_fast_exit_codes=(6,)
        ),
        core,
    )

    with pytest.raises(AirflowException, match="returned a failure") as raised:
        operator.cleanup(pod=failed, remote_pod=failed)

    assert isinstance(raised.value, AirflowFailException) is not retried


@pytest.mark.parametrize(
    ("phase", "on_finish_action", "deleted"),
    [
        ("Failed", "delete_succeeded_pod", False),
        ("Failed", "keep_pod", False),
        ("Failed", "delete_pod", True),
        ("Succeeded", "delete_succeeded_pod", True),
        ("Succeeded", "keep_pod", False),
    ],
)
def test_a_pod_that_ran_follows_on_finish_action(phase, on_finish_action, deleted):
    finished = pod("train-trial-abc", phase, node_name="gpu-a")
    core = FakeCoreV1Api([])
    core.pods[finished.metadata.name] = finished
    operator = on_fake_cluster(
        PipelinePodOperator(
            task_id="t", namespace=NAMESPACE, image="i", on_finish_action=on_finish_action
        ),
        core,
    )

    if phase == "Failed":
        with pytest.raises(AirflowException, match="returned a failure"):
            operator.cleanup(pod=finished, remote_pod=finished)
    else:
        operator.cleanup(pod=finished, remote_pod=finished)

    assert core.deleted == (["train-trial-abc"] if deleted else [])


def test_a_try_that_gives_up_waiting_for_a_node_deletes_its_pod():
    # The whole synchronous path: the pod is made, never placed, the schedule timeout ends it.
    core = FakeCoreV1Api([node("gpu-a", 1)])
    operator = on_fake_cluster(
        trial(
            gpus=1,
            on_finish_action="delete_succeeded_pod",
            schedule_timeout_seconds=1,
            startup_check_interval_seconds=1,
            log_events_on_startup=False,
        ),
        core,
    )

    with pytest.raises(AirflowException):
        operator.execute(context())

    assert len(core.created) == 1
    assert core.deleted == core.created


def rejected_at_admission(reason: str = "UnexpectedAdmissionError") -> k8s.V1PodStatus:
    """A pod's status once its node's kubelet rejected it at admission (no container ran)."""
    return k8s.V1PodStatus(
        phase="Failed",
        reason=reason,
        message="Allocate failed due to requested number of devices unavailable for "
        "nvidia.com/gpu. Requested: 1, Available: 0, which is unexpected",
    )


def succeeded() -> k8s.V1PodStatus:
    return pod("p", "Succeeded", exit_code=0).status


def gpu_trial_on(
    core: FakeCoreV1Api, admission_retries: int, on_finish_action: str = "delete_succeeded_pod"
) -> TrialPodOperator:
    """A trial running its whole synchronous path on ``core``, without waits or logs."""
    return on_fake_cluster(
        trial(
            gpus=1,
            admission_retries=admission_retries,
            admission_retry_delay_seconds=0,
            startup_check_interval_seconds=1,
            log_events_on_startup=False,
            get_logs=False,
            on_finish_action=on_finish_action,
        ),
        core,
    )


@pytest.mark.parametrize("on_finish_action", ["delete_succeeded_pod", "keep_pod", "delete_pod"])
def test_a_pod_rejected_at_admission_is_made_again_within_the_try(logged, on_finish_action):
    # node_lost: the retry's pod was bound to the node while it was away; its kubelet admitted
    # it on its return before the GPU device plugin had registered again.
    core = FakeCoreV1Api([node("gpu-a", 1)])
    core.next_statuses = [rejected_at_admission(), rejected_at_admission(), succeeded()]

    gpu_trial_on(core, 2, on_finish_action).execute(context())

    assert len(core.created) == 3
    # The rejected pods are gone (nothing to reattach to); the one that ran follows the setting.
    assert not set(core.created[:2]) & set(core.pods)
    assert (core.created[2] in core.pods) is (on_finish_action == "keep_pod")
    again = [w for w in warnings_in(logged) if "rejected at admission" in w]
    assert len(again) == 2
    assert "node gpu-a (UnexpectedAdmissionError: Allocate failed" in again[0]
    assert "(1 of 2)" in again[0]


def test_a_try_killed_while_it_waits_to_make_the_pod_again_makes_none():
    core = FakeCoreV1Api([node("gpu-a", 1)])
    core.next_statuses = [rejected_at_admission(), succeeded()]
    operator = gpu_trial_on(core, admission_retries=3)
    operator.admission_retry_delay_seconds = 0.01
    real_sleep = time.sleep

    def killed_meanwhile(seconds: float) -> None:
        operator.on_kill()  # what SIGTERM to the task does
        real_sleep(seconds)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("ml_pipeline.operators.time.sleep", killed_meanwhile)
        with pytest.raises(AirflowException, match="returned a failure"):
            operator.execute(context())

    assert len(core.created) == 1


def test_a_pod_that_started_is_no_rejection_whatever_its_status_says_later():
    # After a kubelet restart an older kubelet may reject a pod that was running already.
    core = FakeCoreV1Api([node("gpu-a", 1)])
    core.next_statuses = [pod("p", "Running").status, succeeded()]
    operator = gpu_trial_on(core, admission_retries=3)

    def rejected_on_completion(pod: k8s.V1Pod, *args: Any, **kwargs: Any) -> None:
        core.pods[pod.metadata.name].status = rejected_at_admission()

    operator.await_pod_completion = rejected_on_completion
    with pytest.raises(AirflowException, match="returned a failure"):
        operator.execute(context())

    assert len(core.created) == 1


def test_rejections_at_admission_beyond_the_allowed_fail_the_try():
    core = FakeCoreV1Api([node("gpu-a", 1)])
    core.next_statuses = [rejected_at_admission("OutOfnvidia.com/gpu")] * 3

    with pytest.raises(AirflowException, match="returned a failure"):
        gpu_trial_on(core, admission_retries=1).execute(context())

    assert len(core.created) == 2


def test_a_pod_whose_trainer_failed_is_not_made_again():
    core = FakeCoreV1Api([node("gpu-a", 1)])
    core.next_statuses = [pod("p", "Failed", exit_code=1).status, succeeded()]

    with pytest.raises(AirflowException, match="returned a failure"):
        gpu_trial_on(core, admission_retries=3).execute(context())

    assert len(core.created) == 1


def test_an_evicted_pod_is_no_rejection_at_admission():
    evicted = pod("p", "Failed", exit_code=137).status
    evicted.reason = "Evicted"
    core = FakeCoreV1Api([node("gpu-a", 1)])
    core.next_statuses = [evicted, succeeded()]

    with pytest.raises(AirflowException, match="returned a failure"):
        gpu_trial_on(core, admission_retries=3).execute(context())

    assert len(core.created) == 1
