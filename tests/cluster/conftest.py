"""One test cluster for the session, made by the harness library (pytest is a thin layer over it).

``--keep-cluster`` (or ML_TESTBED_KEEP=1) leaves it running for the next run; a running cluster
is reused either way. ``--cluster-provider`` picks the provider (default: automatic).
"""

from __future__ import annotations

import contextlib
import os

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from harness import cluster
from harness.cluster.config import ClusterConfig
from harness.cluster.engine import NoContainerEngine, ensure_docker
from harness.pipeline_settings import PIPELINE
from tests.requirements import unavailable

CLUSTER_NAME = "ml-testbed"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ml-testbed cluster")
    group.addoption("--cluster-provider", choices=cluster.PROVIDERS, default=None)
    group.addoption("--keep-cluster", action="store_true", help="leave the cluster running")


@pytest.fixture(scope="session")
def test_cluster(request: pytest.FixtureRequest) -> cluster.Cluster:
    """The running cluster, ready for the pipeline; removed at the end unless kept."""
    try:
        ensure_docker()
    except NoContainerEngine as error:
        unavailable("stack", f"no container engine can be had here: {error}")
    config = ClusterConfig(name=CLUSTER_NAME, gpu_capacity=4)
    provider = request.config.getoption("--cluster-provider")
    ready = cluster.up(config, provider)
    yield ready
    keep = request.config.getoption("--keep-cluster") or os.environ.get("ML_TESTBED_KEEP") == "1"
    if not keep:
        cluster.down(config, provider)


@pytest.fixture(scope="session")
def core(test_cluster: cluster.Cluster) -> k8s.CoreV1Api:
    """The admin's CoreV1Api."""
    config_file = str(test_cluster.info.admin_kubeconfig)
    return k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=config_file))


@pytest.fixture
def created(core):
    """Creates pods in the training namespace and deletes them after the test."""
    names = []
    namespace = PIPELINE.training_namespace

    def create(body):
        names.append(core.create_namespaced_pod(namespace, body).metadata.name)
        return names[-1]

    yield create
    for name in names:
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
