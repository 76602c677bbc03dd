"""Test clusters: ``up`` makes (or reuses) one with the provider that fits, ``down`` removes it.

Providers: ``kind`` (Docker, kind and a registry), ``local-up`` (Kubernetes built from Debian's
source, for hosts without a registry) and ``kubeconfig`` (an existing cluster, never deleted).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from harness import processes, scratch
from harness.cluster.config import ClusterConfig
from harness.cluster.engine import docker_answers, ensure_docker
from harness.cluster.existing import ExistingClusterProvider
from harness.cluster.images import ClusterImages, ensure_images
from harness.cluster.kind import KindProvider, kind_usable, registry_answers
from harness.cluster.local_up import LocalUpProvider, local_up_usable
from harness.cluster.provider import ClusterInfo, Provider
from harness.cluster.setup import AirflowAccess, configure
from harness.locks import Lease
from harness.paths import lease_file, private_dir, state_dir
from harness.pipeline_settings import REPO_ROOT
from harness.steps import say, step

PROVIDERS = ("auto", "kind", "local-up", "kubeconfig")
PROVIDER_ENV = "ML_TESTBED_CLUSTER_PROVIDER"
KUBECONFIG_ENV = "ML_TESTBED_KUBECONFIG"


class ProviderUnavailable(RuntimeError):
    """The requested provider cannot work on this host."""


@dataclass(frozen=True)
class Cluster:
    """A cluster ready for the pipeline."""

    info: ClusterInfo
    airflow: AirflowAccess
    images: ClusterImages


def choose_provider(
    config: ClusterConfig, requested: str | None = None, kubeconfig: Path | None = None
) -> tuple[Provider, str]:
    """The provider to use and a one-line reason; ``requested`` overrides the automatic choice."""
    requested = requested or os.environ.get(PROVIDER_ENV) or "auto"
    kubeconfig = kubeconfig or (
        Path(os.environ[KUBECONFIG_ENV]) if KUBECONFIG_ENV in os.environ else None
    )
    if requested not in PROVIDERS:
        raise ProviderUnavailable(
            f"unknown cluster provider {requested!r}; choose one of {PROVIDERS}"
        )
    if requested == "kubeconfig" or (requested == "auto" and kubeconfig):
        if kubeconfig is None:
            raise ProviderUnavailable(
                f"the kubeconfig provider needs --kubeconfig or {KUBECONFIG_ENV}"
            )
        return ExistingClusterProvider(config, kubeconfig), f"existing cluster from {kubeconfig}"
    kind_ok, kind_why = kind_usable() if requested in ("auto", "kind") else (False, "")
    if requested == "kind":
        if not kind_ok:
            raise ProviderUnavailable(f"kind cannot work here: {kind_why}")
        return KindProvider(config), f"kind requested: {kind_why}"
    local_ok, local_why = local_up_usable()
    if requested == "local-up":
        if not local_ok:
            raise ProviderUnavailable(f"local-up cannot work here: {local_why}")
        return LocalUpProvider(config), f"local-up requested: {local_why}"
    # Automatically, kind only with its registry image; without a registry local-up is the
    # faster choice (no node image to build), and kind is there when asked for.
    if kind_ok and registry_answers():
        return KindProvider(config), f"kind: {kind_why}"
    if local_ok:
        kind_note = "no registry for kind's node image" if kind_ok else f"kind unusable: {kind_why}"
        return LocalUpProvider(config), f"local-up: {kind_note}; {local_why}"
    raise ProviderUnavailable(
        f"no cluster provider works here: kind: {kind_why}; local-up: {local_why}. "
        f"Install Docker and kind, or pass --kubeconfig for an existing cluster."
    )


def provider_of(info: ClusterInfo) -> Provider:
    """The provider of a running cluster (what takes its nodes away and brings them back)."""
    return _named(ClusterConfig(name=info.name), info.provider, info.admin_kubeconfig)


def _named(config: ClusterConfig, name: str, kubeconfig: Path | None) -> Provider:
    """The provider called ``name``, without asking whether it can work here."""
    if name == "kind":
        return KindProvider(config)
    if name == "local-up":
        return LocalUpProvider(config)
    if kubeconfig is None:
        raise ProviderUnavailable("the kubeconfig provider needs --kubeconfig")
    return ExistingClusterProvider(config, kubeconfig)


def _remembered(config: ClusterConfig) -> str | None:
    marker = state_dir(config.name) / "provider"
    return marker.read_text().strip() if marker.exists() else None


def _refuse_a_second_provider(
    config: ClusterConfig, requested: str | None, kubeconfig: Path | None
) -> None:
    """A cluster of this name that runs on one provider while another is asked for (the
    option or the environment): both would share one state folder, so this stops."""
    remembered = _remembered(config)
    asked = requested or os.environ.get(PROVIDER_ENV)
    if not remembered or not asked or asked in ("auto", remembered):
        return
    try:
        running = _named(config, remembered, kubeconfig).info()
    except ProviderUnavailable:  # a kubeconfig cluster named without its file: not ours to see
        running = None
    if running is not None:
        source = "--provider" if requested else PROVIDER_ENV
        raise ProviderUnavailable(
            f"cluster {config.name!r} runs on {remembered}, and {source} asks for {asked}: take "
            f"it down first (python -m harness down --name {config.name}, or cluster down), "
            "or ask for the one that runs"
        )


def up(
    config: ClusterConfig,
    requested: str | None = None,
    kubeconfig: Path | None = None,
    beside_creation: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> Cluster:
    """Brings the cluster up (or reuses it) and prepares it for the pipeline.

    ``beside_creation`` is held while the provider makes the cluster, once the provider is
    chosen and Docker answers: the caller's work that can run meanwhile (the stack's images).
    """
    _refuse_a_second_provider(config, requested, kubeconfig)
    # What is asked for (option, then environment) before what ran last under this name.
    asked = requested or os.environ.get(PROVIDER_ENV) or _remembered(config)
    provider, reason = choose_provider(config, asked, kubeconfig)
    say(f"cluster provider: {provider.name} ({reason})")
    _sweep_scratch()
    if not docker_answers():
        with step("container engine"):
            ensure_docker()
    with beside_creation():
        info = provider.create()
    state = state_dir(config.name)
    private_dir(state)
    (state / "provider").write_text(provider.name)
    with step("cluster images loaded into every node"):
        images = ensure_images(REPO_ROOT)
        provider.load_images(images.all())
        provider.serve_gpus(images.device_plugin)
    with step("GPU capacity, namespaces, RBAC, shared data"):
        airflow = configure(info, config, provider.shared_data_path, state)
        # A capacity watcher left by an older harness would patch over the plugin's count.
        processes.stop(state, "gpu-capacity")
    return Cluster(info=info, airflow=airflow, images=images)


def down(
    config: ClusterConfig,
    requested: str | None = None,
    kubeconfig: Path | None = None,
    force: bool = False,
    wait_seconds: float = 10,
) -> None:
    """Removes everything ``up`` made (an existing cluster is left alone), once no other
    process holds the lease of its name (a stack on it: LeaseInUse); ``force`` regardless."""
    provider, _ = choose_provider(config, requested or _remembered(config), kubeconfig)
    alone = (
        nullcontext()
        if force
        else Lease.of(lease_file(config.name)).alone(wait_seconds, f"cluster {config.name}")
    )
    with alone, step(f"delete the {provider.name} cluster {config.name!r}"):
        state = state_dir(config.name)
        if state.exists():
            processes.stop(state, "gpu-capacity")
        provider.delete()
    _sweep_scratch()


def _sweep_scratch() -> None:
    """Temporary folders left by a harness process that was killed (harness.scratch)."""
    removed = scratch.sweep()
    if removed:
        say(f"    removed {len(removed)} temporary folder(s) of killed harness processes")


def status(
    config: ClusterConfig, requested: str | None = None, kubeconfig: Path | None = None
) -> ClusterInfo | None:
    """The running cluster, or None."""
    provider, _ = choose_provider(config, requested or _remembered(config), kubeconfig)
    return provider.info()
