"""On a cluster the harness does not own, setup changes only the pipeline's namespaces."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from harness.cluster import setup
from harness.cluster.config import ClusterConfig
from harness.cluster.provider import ClusterInfo

CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n").decode()


class _Recorder:
    """A Kubernetes API that records every call (name, namespace or None) and answers enough."""

    def __init__(self, calls: list[tuple[str, str | None]]) -> None:
        self.calls = calls

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            namespaced = "namespaced" in name and args and isinstance(args[0], str)
            namespace = None
            if namespaced:
                # create_namespaced_X(namespace, body); create_namespaced_..._token(name, ns, body)
                namespace = args[1] if name.endswith("_token") else args[0]
            self.calls.append((name, namespace))
            if name == "create_namespaced_service_account_token":
                return SimpleNamespace(status=SimpleNamespace(token="bound-token"))
            if name == "read_namespaced_secret":
                return SimpleNamespace(
                    data={"token": base64.b64encode(b"t").decode(), "ca.crt": CA}
                )
            if name == "read_namespaced_config_map":  # no kube-root-ca.crt: the kubeconfig's CA
                return SimpleNamespace(data=None)
            return SimpleNamespace()

        return call


def _kubeconfig(path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://k8s:6443",
                                                       "certificate-authority-data": CA}}],
                "contexts": [{"name": "admin@c", "context": {"cluster": "c", "user": "admin"}}],
                "current-context": "admin@c",
                "users": [{"name": "admin", "user": {"token": "admin"}}],
            }
        )
    )  # fmt: skip
    return path


@pytest.fixture
def calls(monkeypatch):
    made: list[tuple[str, str | None]] = []
    monkeypatch.setattr(setup.k8s_config, "new_client_from_config", lambda **_: None)
    monkeypatch.setattr(setup.k8s, "CoreV1Api", lambda _: _Recorder(made))
    monkeypatch.setattr(setup.k8s, "RbacAuthorizationV1Api", lambda _: _Recorder(made))
    return made


def _configure(tmp_path, owned: bool):
    info = ClusterInfo(
        name="c",
        provider="local-up" if owned else "kubeconfig",
        admin_kubeconfig=_kubeconfig(tmp_path / "admin.kubeconfig"),
        cpu_nodes=("cpu",),
        gpu_nodes=("gpu",),
        host_address_for_pods="10.0.0.1",
        owned=owned,
    )
    return setup.configure(info, ClusterConfig(name="c", gpu_capacity=0), "/data", tmp_path)


def test_an_existing_cluster_gets_nothing_outside_the_pipelines_namespaces(tmp_path, calls):
    access = _configure(tmp_path, owned=False)
    namespaces = set(ClusterConfig().namespaces)
    outside = [
        (name, namespace)
        for name, namespace in calls
        if name.startswith(("create", "patch", "replace", "delete"))
        and name != "create_namespace"
        and namespace not in namespaces
    ]
    assert outside == []
    assert not any(name.startswith("patch_node") for name, _ in calls)
    # The token expires: no long-lived token Secret is made.
    assert ("create_namespaced_secret", ClusterConfig().namespaces[0]) not in calls
    kubeconfig = yaml.safe_load(access.kubeconfig.read_text())
    assert kubeconfig["users"][0]["user"]["token"] == "bound-token"
    assert kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"] == CA


def test_an_owned_cluster_gets_its_hostpath_volume_and_node_reading(tmp_path, calls):
    _configure(tmp_path, owned=True)
    names = [name for name, _ in calls]
    assert "create_persistent_volume" in names and "create_cluster_role" in names
