"""The whole local world: cluster, services (moto S3, MLflow) and Airflow, up and down in order.

``Stack.up`` reuses whatever part already runs healthy; ``Stack.down`` removes every process,
container and folder the harness started for the stack, also after a crash or ``kill -9``
(processes are found by pid files, containers by labels).
"""

from __future__ import annotations

import base64
import time
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from harness import cluster, gpu_profile, processes, runs, services
from harness.airflow import database
from harness.airflow import server as airflow_server
from harness.airflow.client import AirflowClient
from harness.airflow.environment import AirflowConnections, airflow_environment, free_port
from harness.cluster.config import ClusterConfig
from harness.cluster.device_plugin.topology import MIG_RESOURCES
from harness.head_start import images_beside_creation
from harness.locks import Lease, LeaseInUse, held
from harness.paths import check_name, lease_file, state_dir, up_lock_file
from harness.pipeline_settings import MISSING_IMAGE, PIPELINE
from harness.services import proxies
from harness.steps import say, step
from ml_pipeline.settings import harness_profile

PIPELINE_DAG_ID = "ml_full_training_pipeline"
# Bring-up builds images and Kubernetes on a cold machine: waiting for it can take long.
UP_LOCK_TIMEOUT_SECONDS = 3600


@dataclass(frozen=True)
class StackConfig:
    """Which stack: its name (one per host at a time for local-up), provider and GPU count."""

    name: str = "ml-testbed"
    provider: str | None = None
    gpu_capacity: int = 4

    def __post_init__(self) -> None:
        check_name(self.name, "stack")


@dataclass
class RunningStack:
    """Everything a scenario needs to reach the running stack."""

    cluster: cluster.Cluster
    services: services.Services
    # How pods and Airflow reach S3 and MLflow: through the fault proxies.
    proxies: proxies.FaultProxies
    airflow: airflow_server.AirflowServer
    pipeline_settings: dict
    timings: dict[str, float] = field(default_factory=dict)

    def client(self) -> AirflowClient:
        """A REST client of the stack's Airflow."""
        return AirflowClient(self.airflow.api_url, self.airflow.user, self.airflow.password)


class StackInUse(LeaseInUse):
    """``down`` was refused: another process holds a lease on the stack."""


class Stack:
    """Brings the stack up and down; usable as a context manager (``keep`` leaves it running).

    The stack is leased: a process that uses it for a while (a pytest session, ``harness
    replay``) holds a shared lease (``hold``), and ``down`` removes the stack only when it can
    have the lease alone, so one user's ``down`` never takes the stack from another. Bring-ups
    are serialised by a lock of their own. Both are ``flock`` files in the state root.
    """

    def __init__(self, config: StackConfig | None = None, keep: bool = False) -> None:
        self.config = config or StackConfig()
        self.keep = keep
        self.state = state_dir(self.config.name)
        self.running: RunningStack | None = None
        self._holding = False

    @property
    def lease(self) -> Lease:
        """The stack's lease: shared by its users, had alone while it is taken down."""
        return Lease.of(lease_file(self.config.name))

    def hold(self) -> None:
        """Takes a shared lease for this object, kept until ``release``, ``down`` or the
        process's end."""
        if not self._holding:
            self.lease.hold()
            self._holding = True

    def release(self) -> None:
        """Gives this object's lease back."""
        if self._holding:
            self.lease.release()
            self._holding = False

    def _cluster_config(self) -> ClusterConfig:
        return ClusterConfig(name=self.config.name, gpu_capacity=self.config.gpu_capacity)

    def is_running(self) -> bool:
        """Whether any process of this stack runs now (whoever started it)."""
        return any(processes.running_pid(self.state, n) for n in processes.names(self.state))

    def up(self) -> RunningStack:
        """Cluster, then services, then Airflow; each reused when it already runs. One process
        at a time brings a stack up; the others wait, then find it running."""

        def waiting() -> None:
            say(f"waiting: another process is bringing stack {self.config.name} up")

        up_lock = up_lock_file(self.config.name)
        with held(up_lock, timeout=UP_LOCK_TIMEOUT_SECONDS, waiting=waiting):
            # Held for the bring-up, so that nobody's down removes a half-made stack.
            self.lease.hold()
            try:
                return self._up()
            finally:
                self.lease.release()

    def _up(self) -> RunningStack:
        # A bad setting is refused before anything starts.
        database_backend = database.backend()
        timings: dict[str, float] = {}
        started = time.monotonic()
        # On a stack that is not running, the images are built beside the cluster's creation
        # (on a new machine: beside the Kubernetes compile).
        beside = (
            nullcontext if self.is_running() else partial(images_beside_creation, self.config.name)
        )
        ready = cluster.up(self._cluster_config(), self.config.provider, beside_creation=beside)
        timings["cluster"] = time.monotonic() - started
        mark = time.monotonic()
        with step("services (moto S3, MLflow)"):
            running_services = services.up(self.config.name, ready.info.host_address_for_pods)
        with step("fault proxies in front of S3 and MLflow"):
            fault_proxies = proxies.up(self.state, running_services)
        timings["services"] = time.monotonic() - mark
        mark = time.monotonic()
        with step("pipeline credentials Secret in the pipeline's namespaces"):
            _credentials_secret(ready, running_services)
        settings = harness_profile(
            **gpu_profile.pipeline_overrides(),
            trainer_image=ready.images.trainer,
            allowed_trial_images=[MISSING_IMAGE],
            # The MIG profiles a scenario may partition the GPU node's GPUs into.
            allowed_gpu_resources=list(MIG_RESOURCES),
            image_pull_policy="Never" if ready.info.owned else "IfNotPresent",
            mlflow_tracking_uri=fault_proxies.mlflow_uri,
            pod_s3_endpoint_url=fault_proxies.s3_endpoint,
        )
        home = self.state / "airflow"
        port_file = home / "api-port"
        api_port = int(port_file.read_text()) if port_file.exists() else free_port()
        metadata = database.start(
            self.state,
            home,
            database_backend,
            airflow_running=bool(airflow_server.running_components(self.state)),
            avoid_ports=frozenset({api_port}),
        )
        env = airflow_environment(
            home,
            api_port,
            AirflowConnections(
                s3_endpoint=fault_proxies.s3_endpoint,
                kubeconfig=ready.airflow.kubeconfig,
                namespace=PIPELINE.training_namespace,
                xcom_sidecar_image=ready.images.sidecar,
            ),
            settings,
            metadata.environment(),
        )
        port_file.write_text(str(api_port))
        airflow = airflow_server.start(self.state, env)
        client = AirflowClient(airflow.api_url, airflow.user, airflow.password)
        client.wait_for_dag(PIPELINE_DAG_ID)
        # deploy_model runs in this pool: one deploy at a time checks and moves the alias.
        client.ensure_pool(PIPELINE.promotion_pool, 1, "deploy_model: one promotion at a time")
        timings["airflow"] = time.monotonic() - mark
        self.running = RunningStack(
            ready, running_services, fault_proxies, airflow, settings, timings
        )
        _end_orphaned_replays(self.running)
        say(
            f"stack {self.config.name} up in {time.monotonic() - started:.1f} s: Airflow "
            f"{airflow.api_url}, MLflow {running_services.mlflow_uri}, "
            f"S3 {running_services.s3_endpoint}"
        )
        return self.running

    def down(self, force: bool = False, wait_seconds: float = 10) -> None:
        """Airflow, then services, then the cluster (which removes the state folder).

        Only when no other process holds a lease (waiting ``wait_seconds`` for them to let go);
        StackInUse otherwise, with the stack left running. ``force`` removes it regardless.
        """
        alone = (
            nullcontext() if force else self.lease.alone(wait_seconds, f"stack {self.config.name}")
        )
        try:
            with alone:
                self._down(force)
        except LeaseInUse:
            raise StackInUse(
                f"stack {self.config.name} is in use by another process (a pytest session "
                f"or `python -m harness replay` holds its lease, {self.lease.path}), so it "
                "was left running; stop that process first, or remove it anyway with "
                "`python -m harness down --force`"
            ) from None
        self.release()

    def _down(self, force: bool) -> None:
        with step("Airflow"):
            airflow_server.stop(self.state)
            database.stop(self.state)
        with step("services"):
            proxies.down(self.state)
            services.down(self.config.name)
        cluster.down(self._cluster_config(), self.config.provider, force=force)

    def __enter__(self) -> RunningStack:
        try:
            return self.up()
        except BaseException:
            # A half-started stack is not left behind (Ctrl-C included), unless another
            # process uses it by now.
            with suppress(StackInUse):
                self.down()
            raise

    def __exit__(self, *exc_info: object) -> None:
        if not self.keep:
            self.down()


def _end_orphaned_replays(running: RunningStack) -> None:
    """Runs of replays that were killed are failed and their pods removed (harness.runs)."""
    runs.end_orphans(
        running.airflow.home,
        running.client(),
        _core_api(running.cluster),
        PIPELINE_DAG_ID,
        list(running.cluster.airflow.namespaces),
    )


def _core_api(ready: cluster.Cluster) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(
        k8s_config.new_client_from_config(config_file=str(ready.info.admin_kubeconfig))
    )


def _credentials_secret(ready: cluster.Cluster, running: services.Services) -> None:
    """S3 credentials reach pods through a Secret, never as plain values in the pod spec."""
    api = _core_api(ready)
    data = {
        key: base64.b64encode(value.encode()).decode()
        for key, value in running.pod_credentials().items()
    }
    for namespace in ready.airflow.namespaces:
        body = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=PIPELINE.credentials_secret), data=data)
        try:
            api.create_namespaced_secret(namespace, body)
        except ApiException as error:
            if error.status != 409:
                raise
            api.replace_namespaced_secret(PIPELINE.credentials_secret, namespace, body)


def stack_state(name: str) -> Path:
    """The state folder of a stack (for logs)."""
    return state_dir(name)
