"""The test cluster's scheduler really enforces GPUs, taints, tolerations and node selectors."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from types import SimpleNamespace

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream

from harness import cluster
from harness.cluster import gpus
from harness.cluster.config import ClusterConfig
from harness.cluster.gpu_capacity import counts
from harness.pipeline_settings import PIPELINE

NAMESPACE = PIPELINE.training_namespace
GPU = PIPELINE.gpu_resource_name


def pod(test_cluster, name, command, *, gpus=0, tolerate=True, select_gpu_node=True):
    """A pod of the cluster's base image; GPU pods look like the pipeline's trials."""
    resources = k8s.V1ResourceRequirements(
        requests={"cpu": "10m", "memory": "16Mi", **({GPU: str(gpus)} if gpus else {})},
        limits={"cpu": "200m", "memory": "64Mi", **({GPU: str(gpus)} if gpus else {})},
    )
    toleration = PIPELINE.gpu_tolerations[0]
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=f"{name}-{uuid.uuid4().hex[:6]}", labels={"test": name}),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            automount_service_account_token=False,
            containers=[
                k8s.V1Container(
                    name="main",
                    image=test_cluster.images.base,
                    image_pull_policy="Never",
                    command=["sh", "-c", command],
                    resources=resources,
                )
            ],
            tolerations=[
                k8s.V1Toleration(key=toleration.key, operator="Exists", effect=toleration.effect)
            ]
            if tolerate
            else None,
            node_selector=dict(PIPELINE.gpu_node_selector) if gpus and select_gpu_node else None,
        ),
    )


def wait_for(check, timeout=90, interval=0.5, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def phase(core, name):
    return core.read_namespaced_pod(name, NAMESPACE).status.phase


def unschedulable_message(core, name):
    conditions = core.read_namespaced_pod(name, NAMESPACE).status.conditions or []
    for condition in conditions:
        if condition.type == "PodScheduled" and condition.status == "False":
            return condition.message
    return None


def test_gpu_pod_runs_on_the_gpu_node_with_logs_and_exec(test_cluster, core, created):
    name = created(pod(test_cluster, "gpu-one", "echo hello-from-gpu; sleep 60", gpus=1))
    wait_for(lambda: phase(core, name) == "Running", what=f"{name} Running")
    placed = core.read_namespaced_pod(name, NAMESPACE)
    assert placed.spec.node_name in test_cluster.info.gpu_nodes
    wait_for(lambda: "hello-from-gpu" in core.read_namespaced_pod_log(name, NAMESPACE), what="log")
    output = stream(
        core.connect_get_namespaced_pod_exec,
        name,
        NAMESPACE,
        command=["cat", "/etc/hostname"],
        stderr=True,
        stdout=True,
        stdin=False,
        tty=False,
    )
    assert output.strip() == name


def test_finished_pods_keep_their_logs_past_every_kubelets_garbage_collection(
    test_cluster, core, created
):
    """On local-up both kubelets share the host's /var/log/pods, and each one's garbage
    collection (every minute) removed the log folders of the other's pods: a finished GPU pod's
    log read "failed to try resolving symlinks" (the trainer's termination message and the
    operator's log reads depend on it)."""
    names = {
        "gpu": created(pod(test_cluster, "log-gpu", "echo kept-on-gpu", gpus=1)),
        "cpu": created(pod(test_cluster, "log-cpu", "echo kept-on-cpu")),
    }
    for name in names.values():
        wait_for(lambda name=name: phase(core, name) == "Succeeded", what=f"{name} Succeeded")
    time.sleep(70)  # past a whole garbage collection period of both kubelets (one minute)
    for where, name in names.items():
        assert f"kept-on-{where}" in core.read_namespaced_pod_log(name, NAMESPACE), name


def test_more_gpus_than_the_capacity_stay_pending(test_cluster, core, created):
    name = created(pod(test_cluster, "gpu-five", "true", gpus=5))
    message = wait_for(lambda: unschedulable_message(core, name), what="unschedulable")
    assert f"Insufficient {GPU}" in message
    time.sleep(3)
    assert phase(core, name) == "Pending"


def test_without_the_toleration_no_gpu_node_and_cpu_pods_stay_on_cpu(test_cluster, core, created):
    intolerant = created(
        pod(test_cluster, "gpu-intolerant", "true", gpus=1, tolerate=False, select_gpu_node=False)
    )
    message = wait_for(lambda: unschedulable_message(core, intolerant), what="unschedulable")
    assert "taint" in message and f"Insufficient {GPU}" in message
    cpu_pods = [created(pod(test_cluster, "cpu", "true", tolerate=False)) for _ in range(2)]
    for name in cpu_pods:
        wait_for(lambda name=name: phase(core, name) == "Succeeded", what=f"{name} Succeeded")
        node = core.read_namespaced_pod(name, NAMESPACE).spec.node_name
        assert node in test_cluster.info.cpu_nodes
    assert phase(core, intolerant) == "Pending"


def max_overlap(intervals):
    """The most intervals [start, end) that share a moment."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda event: (event[0], event[1]),
    )
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def test_gpu_capacity_bounds_concurrent_trials(test_cluster, core, created):
    with gpus.count_held(test_cluster.info, core, GPU, 2):
        names = [created(pod(test_cluster, "contend", "sleep 4", gpus=1)) for _ in range(4)]
        seen_running = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            phases = [phase(core, name) for name in names]
            seen_running = max(seen_running, phases.count("Running"))
            assert phases.count("Running") <= 2
            if phases.count("Succeeded") == 4:
                break
            time.sleep(0.3)
        assert [phase(core, name) for name in names] == ["Succeeded"] * 4
        intervals = []
        for name in names:
            state = core.read_namespaced_pod(name, NAMESPACE).status.container_statuses[0]
            intervals.append(
                (state.state.terminated.started_at, state.state.terminated.finished_at)
            )
        assert max_overlap(intervals) <= 2
        assert seen_running >= 1


def test_a_second_bring_up_leaves_the_gpu_capacity_a_replay_holds(test_cluster, core):
    """A second pytest worker reuses the running cluster while the first replays gpu_contention
    (capacity 2, the cluster held alone): its bring-up must not put the stack's 4 back under the
    replay (CI saw four trials run at once on two GPUs)."""
    info = test_cluster.info
    config = ClusterConfig(name=info.name, gpu_capacity=4)
    with gpus.count_held(info, core, GPU, 2):
        cluster.up(config, info.provider)
        # Past the kubelet's next status update (every 4 s) and the capacity watcher's event.
        time.sleep(5)
        assert [counts(core, node, GPU) for node in info.gpu_nodes] == [("2", 2)]


def test_airflow_kubeconfig_is_limited_to_the_pipeline_namespaces(test_cluster):
    api = k8s.CoreV1Api(
        k8s_config.new_client_from_config(config_file=str(test_cluster.airflow.kubeconfig))
    )
    api.list_namespaced_pod(NAMESPACE)
    # Nodes it may read (a trial's GPU request is checked against them), never change.
    api.list_node()
    label = {"metadata": {"labels": {"ml-testbed/probe": "x"}}}
    for forbidden in (
        lambda: api.patch_node(test_cluster.info.gpu_nodes[0], label),
        lambda: api.list_namespaced_pod("default"),
        lambda: api.list_namespaced_secret(NAMESPACE),
    ):
        with pytest.raises(ApiException) as error:
            forbidden()
        assert error.value.status == 403


def test_kubernetes_pod_operator_returns_its_xcom_with_the_restricted_kubeconfig(
    test_cluster, monkeypatch
):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    extra = {
        "kube_config_path": str(test_cluster.airflow.kubeconfig),
        "namespace": NAMESPACE,
        "xcom_sidecar_container_image": test_cluster.images.sidecar,
    }
    monkeypatch.setenv(
        "AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps({"conn_type": "kubernetes", "extra": extra})
    )
    operator = KubernetesPodOperator(
        task_id="xcom_probe",
        namespace=NAMESPACE,
        image=test_cluster.images.base,
        image_pull_policy="Never",
        cmds=["sh", "-c"],
        arguments=["mkdir -p /airflow/xcom && echo '{\"answer\": 42}' > /airflow/xcom/return.json"],
        do_xcom_push=True,
        get_logs=True,
        on_finish_action="delete_pod",
    )
    # Only Airflow's task runtime is faked: the pod runs on the cluster for real.
    ti = SimpleNamespace(
        dag_id="cluster_test",
        task_id="xcom_probe",
        run_id=f"test_{uuid.uuid4().hex[:6]}",
        map_index=-1,
        try_number=1,
        xcom_push=lambda **_: None,
    )
    context = {
        "ti": ti,
        "task_instance": ti,
        "dag_run": SimpleNamespace(run_id=ti.run_id),
        "run_id": ti.run_id,
        "logical_date": datetime.now(),
        "task": operator,
        "dag": SimpleNamespace(dag_id=ti.dag_id),
    }
    assert operator.execute(context) == {"answer": 42}


def test_the_gpu_node_holds_only_the_images_it_was_given(test_cluster):
    """Its kubelet's image GC is off (a removed image never comes back without a registry), so
    older builds are removed at load instead of filling the disk."""
    if test_cluster.info.provider != "local-up":
        pytest.skip(f"the {test_cluster.info.provider} provider has no GPU node daemon of ours")
    from harness.cluster.engine import docker, image_id
    from harness.cluster.local_up_nodes import gpu_docker_host

    host = gpu_docker_host()
    held = set(docker("images", "-a", "-q", "--no-trunc", host=host).split())
    assert held == {image_id(name, host) for name in test_cluster.images.all()}


def test_the_kind_workers_have_every_image_and_a_second_load_copies_nothing(test_cluster, capsys):
    """kind's own check needs crictl (not packaged in Debian), so the provider asks each
    worker's containerd for the image's id; a stale or missing one would be loaded again."""
    if test_cluster.info.provider != "kind":
        pytest.skip(f"kind's image loading; this cluster is {test_cluster.info.provider}")
    from harness.cluster.config import ClusterConfig
    from harness.cluster.engine import image_id
    from harness.cluster.kind import KindProvider, _node_image_id

    provider = KindProvider(ClusterConfig(name=test_cluster.info.name))
    for image in test_cluster.images.all():
        for node in (*provider.cpu_nodes, *provider.gpu_nodes):
            assert _node_image_id(node, image) == image_id(image), (node, image)
    assert _node_image_id(provider.cpu_nodes[0], "ml-testbed/no-such-image:1") is None
    capsys.readouterr()
    provider.load_images(test_cluster.images.all())
    assert "every image is already in the kind workers" in capsys.readouterr().err
