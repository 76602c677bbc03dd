"""A kind node image built here, offline, from Debian's packages and the project's Kubernetes build.

kind's own images (``kindest/node``, and ``kindest/base`` under ``kind build node-image``) come
from a registry and from GitHub, neither reachable on the project's machine. This image has what
kind expects of a node: systemd as PID 1 behind an entrypoint (harness/cluster/kind_node),
containerd with runc and the CNI plugins, kubeadm, kubelet and kubectl in /usr/bin,
``/kind/version``, and the control-plane images (kube-apiserver, -controller-manager,
-scheduler, kube-proxy, etcd, pause) preloaded into containerd under the names kubeadm asks
for. There is no CoreDNS, kindnetd or local-path-provisioner (no source reachable): the cluster
is made with ``networking.disableDefaultCNI`` and the entrypoint's bridge network, and the
pipeline's pods need no cluster DNS (they reach the host's services by address).

The image is tagged by a hash of its inputs (the base image, the node files, the recipes and the
Kubernetes binaries), so it is built once and rebuilt only when one changes.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from harness.cluster import image_builds
from harness.cluster.engine import docker, image_id
from harness.cluster.images import (
    BASE_IMAGE,
    content_tag,
    ensure_images,
    local_images,
    one_build_at_a_time,
    remove_superseded,
)
from harness.cluster.kubernetes_build import KUBERNETES_VERSION, ensure_binaries
from harness.paths import cache_dir
from harness.pipeline_settings import REPO_ROOT
from harness.steps import run, say, step

NODE_REPOSITORY = "ml-testbed/kind-node"
CONTROL_PLANE_BUILD_REPOSITORY = "ml-testbed/kind-control-plane"
NODE_FILES_DIR = Path(__file__).with_name("kind_node")
# Node file -> (where it goes in the node, its mode).
NODE_FILES = {
    "entrypoint": ("/usr/local/bin/entrypoint", 0o755),
    "runc-without-sys-resource": ("/usr/local/sbin/runc-without-sys-resource", 0o755),
    "containerd-config.toml": ("/etc/containerd/config.toml", 0o644),
    "kubelet.service": ("/etc/systemd/system/kubelet.service", 0o644),
    "10-kubeadm.conf": ("/etc/systemd/system/kubelet.service.d/10-kubeadm.conf", 0o644),
    "ml-testbed-images.service": ("/etc/systemd/system/ml-testbed-images.service", 0o644),
}
NODE_BINARIES = ("kubelet", "kubeadm", "kubectl")
NODE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "iproute2",
    "procps",
    "util-linux",
    "mount",
    "conntrack",
    "ethtool",
    "socat",
    "ca-certificates",
    "jq",  # the runc wrapper's
)
# Units that have no business in a node container: udev would act on the host's devices.
MASKED_UNITS = (
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "getty.target",
    "console-getty.service",
)
# kubeadm's images that the cluster does without (see the module's docstring).
NOT_BUILT = ("coredns",)
APT = (
    "RUN apt-get update \\\n"
    " && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {packages} \\\n"
    " && rm -rf /var/lib/apt/lists/*"
)


@dataclass(frozen=True)
class ControlPlaneImage:
    """One image kubeadm runs, and how it is made here."""

    name: str  # as kubeadm names it, e.g. k8s.gcr.io/kube-apiserver:v1.20.2
    dockerfile: str
    binary: str | None  # the Kubernetes binary it holds, if any


def kubeadm_images(bin_dir: Path) -> list[str]:
    """The images kubeadm v1.20 runs, as it names them (``kubeadm config images list``)."""
    listing = run(
        [
            str(bin_dir / "kubeadm"),
            "config",
            "images",
            "list",
            f"--kubernetes-version=v{KUBERNETES_VERSION}",
        ]
    )
    return [line.strip() for line in listing.splitlines() if line.strip()]


def control_plane_recipes(names: list[str], base: str, pause: str) -> list[ControlPlaneImage]:
    """How each image kubeadm names is made: a Kubernetes binary on the base, Debian's etcd,
    and the harness's pause image; raises on a name it does not know."""
    recipes = []
    for name in names:
        component = name.rsplit("/", 1)[-1].split(":")[0]
        if component in NOT_BUILT:
            continue
        if component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            dockerfile = f"FROM {base}\nCOPY {component} /usr/local/bin/{component}\n"
            recipes.append(ControlPlaneImage(name, dockerfile, component))
        elif component == "kube-proxy":
            packages = APT.format(packages="iptables conntrack")
            dockerfile = f"FROM {base}\n{packages}\nCOPY kube-proxy /usr/local/bin/kube-proxy\n"
            recipes.append(ControlPlaneImage(name, dockerfile, component))
        elif component == "etcd":
            # Debian bookworm's etcd 3.4.23 for kubeadm's 3.4.13: same minor release and flags.
            recipes.append(
                ControlPlaneImage(
                    name, f"FROM {base}\n{APT.format(packages='etcd-server')}\n", None
                )
            )
        elif component == "pause":
            recipes.append(ControlPlaneImage(name, f"FROM {pause}\n", None))
        else:
            raise RuntimeError(
                f"kubeadm v{KUBERNETES_VERSION} asks for the image {name}, which the kind node "
                f"image does not know how to build (harness/cluster/kind_image.py)"
            )
    return recipes


def node_dockerfile(base: str) -> str:
    """The node image's Dockerfile; its context holds the node files, the binaries and
    ``images.tar`` (the control-plane images)."""
    copies = "\n".join(f"COPY {name} {target}" for name, (target, _) in sorted(NODE_FILES.items()))
    return f"""\
FROM {base}
{APT.format(packages=" ".join(NODE_PACKAGES))}
RUN systemctl mask {" ".join(MASKED_UNITS)} \\
 && rm -f /etc/machine-id && touch /etc/machine-id
COPY {" ".join(NODE_BINARIES)} /usr/bin/
{copies}
RUN chmod 0755 {" ".join(target for target, mode in NODE_FILES.values() if mode == 0o755)} \\
 && systemctl enable containerd.service ml-testbed-images.service kubelet.service \\
 && mkdir -p /kind/images /etc/kubernetes/manifests \\
 && echo v{KUBERNETES_VERSION} > /kind/version
COPY images.tar /kind/images/control-plane.tar
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
"""


def node_image_tag(
    base_id: str, pause: str, bin_dir: Path, recipes: list[ControlPlaneImage]
) -> str:
    """The node image's tag: its base, every node file, the recipes, and each Kubernetes binary
    by name, size and modification time (rebuilt binaries get a new one; hashing 600 MB of
    them at every ``cluster up`` would take seconds)."""
    parts = [base_id.encode(), pause.encode(), node_dockerfile(BASE_IMAGE).encode()]
    for name in sorted(NODE_FILES):
        parts += [name.encode(), (NODE_FILES_DIR / name).read_bytes()]
    for recipe in recipes:
        parts += [recipe.name.encode(), recipe.dockerfile.encode()]
    for binary in sorted({*NODE_BINARIES, *(r.binary for r in recipes if r.binary)}):
        stat = (bin_dir / binary).stat()
        parts += [binary.encode(), f"{stat.st_size}:{stat.st_mtime_ns}".encode()]
    return f"v{KUBERNETES_VERSION}-{content_tag(parts)}"


def ensure_node_image() -> str:
    """The kind node image's name, built first where it is missing (Kubernetes too)."""
    bin_dir = ensure_binaries(cache_dir())
    images = ensure_images(REPO_ROOT)
    base_id = image_id(BASE_IMAGE)
    if base_id is None:
        raise RuntimeError(f"the base image {BASE_IMAGE} is missing after ensure_images")
    recipes = control_plane_recipes(kubeadm_images(bin_dir), BASE_IMAGE, images.pause)
    name = f"{NODE_REPOSITORY}:{node_image_tag(base_id, images.pause, bin_dir, recipes)}"
    if image_id(name) is not None:
        say(f"    kind node image {name} is built")
        return name
    with one_build_at_a_time():  # another process may be building it (or removing older ones)
        if image_id(name) is None:
            _build_and_replace(name, bin_dir, recipes)
    return name


def _build_and_replace(name: str, bin_dir: Path, recipes: list[ControlPlaneImage]) -> None:
    with step(
        f"build the kind node image {name} (Debian packages, Kubernetes v{KUBERNETES_VERSION})"
    ):
        _build(name, bin_dir, recipes)
    remove_superseded(name, local_images())


def _build(name: str, bin_dir: Path, recipes: list[ControlPlaneImage]) -> None:
    log = image_builds.build_log(name)
    with image_builds.scratch_dir("kind-node-") as context:
        # Built under names of the harness's own; only the archive calls them as kubeadm does
        # (a k8s.gcr.io/* tag in the host's daemon could be a user's own image).
        built = {_build_name(recipe): recipe.name for recipe in recipes}
        try:
            for recipe in recipes:
                say(f"    image {recipe.name}")
                with image_builds.scratch_dir("control-plane-") as small:
                    (small / "Dockerfile").write_text(recipe.dockerfile)
                    if recipe.binary:
                        image_builds.link_or_copy(bin_dir / recipe.binary, small / recipe.binary)
                    run(
                        ["docker", "build", "--force-rm", "-t", _build_name(recipe), str(small)],
                        log=log,
                        env=image_builds.BUILD_ENV,
                    )
            docker("save", "-o", str(context / "built.tar"), *built)
        finally:
            subprocess.run(["docker", "rmi", *built], capture_output=True)
        renamed_archive(context / "built.tar", context / "images.tar", built)
        (context / "built.tar").unlink()
        (context / "Dockerfile").write_text(node_dockerfile(BASE_IMAGE))
        for file_name in NODE_FILES:
            (context / file_name).write_bytes((NODE_FILES_DIR / file_name).read_bytes())
        for binary in NODE_BINARIES:
            image_builds.link_or_copy(bin_dir / binary, context / binary)
        say(f"    docker build of the node (log: {log})")
        run(
            ["docker", "build", "--force-rm", "-t", name, str(context)],
            log=log,
            env=image_builds.BUILD_ENV,
        )


def _build_name(recipe: ControlPlaneImage) -> str:
    component, _, version = recipe.name.rsplit("/", 1)[-1].partition(":")
    return f"{CONTROL_PLANE_BUILD_REPOSITORY}:{component}-{version}"


def renamed_archive(source: Path, target: Path, names: dict[str, str]) -> None:
    """Copies a ``docker save`` archive, its images' names changed (``names``: old to new)."""
    with tarfile.open(source) as archive, tarfile.open(target, "w") as renamed:
        for member in archive:
            content = archive.extractfile(member) if member.isfile() else None
            if member.name == "manifest.json" and content is not None:
                manifest = json.load(content)
                for image in manifest:
                    image["RepoTags"] = [names.get(tag, tag) for tag in image.get("RepoTags") or []]
                data = json.dumps(manifest).encode()
                member.size = len(data)
                renamed.addfile(member, io.BytesIO(data))
            elif member.name == "repositories":
                continue  # the legacy index of names: manifest.json is what importers read
            else:
                renamed.addfile(member, content)
