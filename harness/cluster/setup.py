"""What every provider's cluster gets: simulated GPUs, namespaces, Airflow's rights, shared data.

Airflow gets a ServiceAccount whose Roles cover only the pipeline's namespaces, and a kubeconfig
with that account's token: the KubernetesPodOperator never holds cluster-admin. On a cluster the
harness owns, the account may also read nodes (a ClusterRole), so that a trial asking for more GPUs
than any node has fails at once (ml_pipeline.operators.TrialPodOperator); on an existing cluster
nothing outside the pipeline's namespaces is changed, and that check is skipped with a warning.
There, too, the shared-data claim is provisioned by the cluster's own storage class (no
cluster-scoped hostPath volume), and Airflow's token is a bound one that expires (TokenRequest),
not a Secret that would outlive the testbed.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from harness.cluster import gpus
from harness.cluster.config import ClusterConfig
from harness.cluster.provider import ClusterInfo
from harness.paths import write_private
from harness.pipeline_settings import PIPELINE
from harness.waiting import wait_until

AIRFLOW_ACCOUNT = "airflow-pod-launcher"
ROLE_RULES = (
    k8s.V1PolicyRule(
        api_groups=[""],
        resources=["pods"],
        verbs=["create", "get", "list", "watch", "delete", "patch"],
    ),
    k8s.V1PolicyRule(api_groups=[""], resources=["pods/log"], verbs=["get", "list"]),
    k8s.V1PolicyRule(api_groups=[""], resources=["pods/exec"], verbs=["create", "get"]),
    k8s.V1PolicyRule(api_groups=[""], resources=["events"], verbs=["get", "list", "watch"]),
)
NODE_READER = f"{AIRFLOW_ACCOUNT}-node-reader"
# The shared-data claim's storage class on an existing cluster (unset: its default class).
STORAGE_CLASS_ENV = "ML_TESTBED_STORAGE_CLASS"
# How long Airflow's token lasts on an existing cluster: a nightly job's length, with margin.
BOUND_TOKEN_SECONDS = 24 * 3600
NODE_READER_RULES = (k8s.V1PolicyRule(api_groups=[""], resources=["nodes"], verbs=["get", "list"]),)


@dataclass(frozen=True)
class AirflowAccess:
    """How Airflow reaches the cluster: a kubeconfig limited to the pipeline's namespaces."""

    kubeconfig: Path
    namespaces: tuple[str, ...]


def _created(call, *args) -> None:
    try:
        call(*args)
    except ApiException as error:
        if error.status != 409:
            raise


def configure(
    cluster: ClusterInfo, config: ClusterConfig, shared_data_path: str, out_dir: Path
) -> AirflowAccess:
    """Applies the pipeline's cluster objects (idempotent) and writes Airflow's kubeconfig."""
    api_client = k8s_config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
    core, rbac = k8s.CoreV1Api(api_client), k8s.RbacAuthorizationV1Api(api_client)
    if cluster.owned and cluster.gpu_nodes:
        # On a running cluster the GPUs there stay: a replay may hold another count while a
        # second process (a pytest worker) brings the same stack up.
        gpus.provide(cluster, core)
    for namespace in config.namespaces:
        _created(core.create_namespace, k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    home = config.namespaces[0]
    _created(
        core.create_namespaced_service_account,
        home,
        k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=AIRFLOW_ACCOUNT)),
    )
    if cluster.owned:
        _grant_node_reading(rbac, home)
    for namespace in config.namespaces:
        _grant_pod_rights(rbac, namespace, home)
        _created(
            core.create_namespaced_service_account,
            namespace,
            k8s.V1ServiceAccount(
                metadata=k8s.V1ObjectMeta(name=PIPELINE.pod_service_account),
                automount_service_account_token=False,
            ),
        )
    if cluster.owned:
        _shared_volume(core, config, shared_data_path)
        token, ca_data = _account_token(core, home)
    else:
        _shared_claim(core, None, os.environ.get(STORAGE_CLASS_ENV) or None)
        token, ca_data = _bound_token(core, home), _ca_data(core, home, cluster.admin_kubeconfig)
    return AirflowAccess(
        kubeconfig=_write_token_kubeconfig(
            out_dir / "airflow.kubeconfig", cluster, token, ca_data, home
        ),
        namespaces=config.namespaces,
    )


def _grant_pod_rights(rbac: k8s.RbacAuthorizationV1Api, namespace: str, home: str) -> None:
    meta = k8s.V1ObjectMeta(name=AIRFLOW_ACCOUNT, namespace=namespace)
    _created(
        rbac.create_namespaced_role, namespace, k8s.V1Role(metadata=meta, rules=list(ROLE_RULES))
    )
    binding = k8s.V1RoleBinding(
        metadata=meta,
        role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=meta.name),
        subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name=AIRFLOW_ACCOUNT, namespace=home)],
    )
    _created(rbac.create_namespaced_role_binding, namespace, binding)


def _grant_node_reading(rbac: k8s.RbacAuthorizationV1Api, home: str) -> None:
    """Lets Airflow's account get and list nodes: cluster-wide, so only on a cluster we own."""
    meta = k8s.V1ObjectMeta(name=NODE_READER)
    _created(
        rbac.create_cluster_role, k8s.V1ClusterRole(metadata=meta, rules=list(NODE_READER_RULES))
    )
    binding = k8s.V1ClusterRoleBinding(
        metadata=meta,
        role_ref=k8s.V1RoleRef(
            api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=NODE_READER
        ),
        subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name=AIRFLOW_ACCOUNT, namespace=home)],
    )
    _created(rbac.create_cluster_role_binding, binding)


def _shared_volume(core: k8s.CoreV1Api, config: ClusterConfig, host_path: str) -> None:
    """A hostPath volume (cluster-scoped: only on a cluster the harness owns) and its claim."""
    volume = f"{config.name}-shared-data"
    _created(
        core.create_persistent_volume,
        k8s.V1PersistentVolume(
            metadata=k8s.V1ObjectMeta(name=volume),
            spec=k8s.V1PersistentVolumeSpec(
                capacity={"storage": "10Gi"},
                access_modes=["ReadWriteMany"],
                storage_class_name="",
                persistent_volume_reclaim_policy="Retain",
                host_path=k8s.V1HostPathVolumeSource(path=host_path, type="DirectoryOrCreate"),
            ),
        ),
    )
    _shared_claim(core, volume, "")


def _shared_claim(core: k8s.CoreV1Api, volume: str | None, storage_class: str | None) -> None:
    """The pipeline's shared-data claim: bound to ``volume``, or provisioned by
    ``storage_class`` (None: the cluster's default class)."""
    _created(
        core.create_namespaced_persistent_volume_claim,
        PIPELINE.training_namespace,
        k8s.V1PersistentVolumeClaim(
            metadata=k8s.V1ObjectMeta(name=PIPELINE.shared_data_claim),
            spec=k8s.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteMany"],
                storage_class_name=storage_class,
                volume_name=volume,
                resources=k8s.V1ResourceRequirements(requests={"storage": "10Gi"}),
            ),
        ),
    )


def _bound_token(core: k8s.CoreV1Api, namespace: str) -> str:
    """A token of Airflow's account that expires (TokenRequest), for a cluster not ours."""
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=BOUND_TOKEN_SECONDS)
    )
    answer = core.create_namespaced_service_account_token(AIRFLOW_ACCOUNT, namespace, request)
    return answer.status.token


def _admin_cluster(admin_kubeconfig: Path) -> dict:
    """The ``cluster`` entry (server, CA) of the admin kubeconfig's current context."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    return next(
        c["cluster"] for c in admin["clusters"] if c["name"] == context["context"]["cluster"]
    )


def _ca_data(core: k8s.CoreV1Api, namespace: str, admin_kubeconfig: Path) -> str:
    """The cluster CA (base64 PEM): the namespace's ``kube-root-ca.crt`` (Kubernetes 1.21+),
    else the admin kubeconfig's (a relative file is relative to the kubeconfig)."""
    try:
        pem = (core.read_namespaced_config_map("kube-root-ca.crt", namespace).data or {}).get(
            "ca.crt"
        )
    except ApiException:
        pem = None
    if pem:
        return base64.b64encode(pem.encode()).decode()
    entry = _admin_cluster(admin_kubeconfig)
    if "certificate-authority-data" in entry:
        return entry["certificate-authority-data"]
    if "certificate-authority" not in entry:
        raise RuntimeError(
            f"{admin_kubeconfig} names no CA for its cluster, and the namespace {namespace} has "
            "no kube-root-ca.crt ConfigMap: give the kubeconfig the cluster's CA"
        )
    ca_file = (
        admin_kubeconfig.parent / Path(entry["certificate-authority"]).expanduser()
    ).resolve()
    return base64.b64encode(ca_file.read_bytes()).decode()


def _account_token(core: k8s.CoreV1Api, namespace: str, timeout: float = 60) -> tuple[str, str]:
    # An explicit token Secret works on every version (1.24+ no longer makes one by itself).
    name = f"{AIRFLOW_ACCOUNT}-token"
    _created(
        core.create_namespaced_secret,
        namespace,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(
                name=name, annotations={"kubernetes.io/service-account.name": AIRFLOW_ACCOUNT}
            ),
            type="kubernetes.io/service-account-token",
        ),
    )

    def filled() -> tuple[str, str] | None:
        data = core.read_namespaced_secret(name, namespace).data or {}
        if "token" in data and "ca.crt" in data:
            return base64.b64decode(data["token"]).decode(), data["ca.crt"]
        return None

    return wait_until(
        filled,
        timeout=timeout,
        timed_out=f"the token controller did not fill Secret {namespace}/{name} in {timeout:.0f} s",
        error=RuntimeError,
    )


def _write_token_kubeconfig(
    path: Path, cluster: ClusterInfo, token: str, ca_data: str, namespace: str
) -> Path:
    server = _admin_cluster(cluster.admin_kubeconfig)["server"]
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster.name,
                "cluster": {"server": server, "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": AIRFLOW_ACCOUNT, "user": {"token": token}}],
        "contexts": [
            {
                "name": AIRFLOW_ACCOUNT,
                "context": {
                    "cluster": cluster.name,
                    "user": AIRFLOW_ACCOUNT,
                    "namespace": namespace,
                },
            }
        ],
        "current-context": AIRFLOW_ACCOUNT,
    }
    write_private(path, yaml.safe_dump(document, sort_keys=False))
    return path
