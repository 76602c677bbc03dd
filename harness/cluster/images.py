"""The images every test cluster needs, built locally and tagged by the hash of their inputs.

A tag names its inputs, so an image is rebuilt only when they change and the check when nothing
changed is one ``docker images`` call. The chain: base (Debian bookworm) -> python base (its
python3) -> trainer (trainer/Dockerfile), and python base -> device plugin (grpcio and
harness.cluster.device_plugin, the DaemonSet that serves kind's GPUs); the pause image stands
alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness import gpu_profile
from harness.cluster import image_builds
from harness.cluster.engine import docker, image_id
from harness.paths import cache_dir
from harness.steps import say, step

BASE_IMAGE = "ml-testbed/base:bookworm"
# Where a registry answers, the base is Debian's own image rather than a debootstrap.
REGISTRY_BASE_IMAGE = "debian:bookworm-slim"
PYTHON_BASE_REPOSITORY = "ml-testbed/python-base"
PAUSE_REPOSITORY = "ml-testbed/pause"
TRAINER_REPOSITORY = "ml-testbed/trainer"
DEVICE_PLUGIN_REPOSITORY = "ml-testbed/device-plugin"
DEVICE_PLUGIN_PACKAGE = Path(__file__).with_name("device_plugin")
# What the plugin imports besides the standard library, at the lock's versions.
DEVICE_PLUGIN_REQUIREMENTS = ("grpcio", "protobuf")
HOST_CA_FILE = "host-ca-certificates.crt"
PAUSE_SOURCE = Path(__file__).with_name("pause.c")
# The only torch that installs without gigabytes of downloads here: the local CPU wheel (cp311,
# which Debian bookworm's python3 is). ML_TESTBED_TORCH_WHEEL points elsewhere.
TORCH_WHEEL_ENV = "ML_TESTBED_TORCH_WHEEL"
DEFAULT_TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")


@dataclass(frozen=True)
class ClusterImages:
    """The images of a test cluster, by name; ``built`` lists those this call had to build."""

    base: str
    python_base: str
    pause: str
    # The KubernetesPodOperator's xcom sidecar: it needs sh, cat and kill, which the base has.
    sidecar: str
    trainer: str
    device_plugin: str
    built: tuple[str, ...] = field(default=(), compare=False)

    def all(self) -> list[str]:
        """The images pods run, each once, for loading into every node.

        The python base is left out: no pod runs it, and its layers travel inside the trainer.
        """
        names = [self.pause, self.base, self.sidecar, self.trainer, self.device_plugin]
        return list(dict.fromkeys(names))


def python_base_recipe(base: str) -> tuple[str, dict[str, bytes]]:
    """The python base's Dockerfile and context files: the one place that decides its Python.

    Always Debian's python3 on our base, also where python:3.11-slim could be pulled, so that the
    trainer runs the same interpreter with or without a registry. The host's CA certificates go
    in (ca-certificates' install adds them to the image's store) so that pip trusts what the
    host trusts.
    """
    files: dict[str, bytes] = {}
    lines = [f"FROM {base}"]
    bundle = image_builds.host_ca_bundle()
    if bundle is not None:
        files[HOST_CA_FILE] = bundle.read_bytes()
        lines.append(f"COPY {HOST_CA_FILE} /usr/local/share/ca-certificates/{HOST_CA_FILE}")
    lines.append(
        "RUN apt-get update \\\n"
        " && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \\\n"
        " && rm -rf /var/lib/apt/lists/*"
    )
    return "\n".join(lines) + "\n", files


def device_plugin_recipe(python_base: str, lock: Path) -> tuple[str, dict[str, bytes]]:
    """The device plugin image's Dockerfile and context: the package's modules (nothing else of
    the harness: ``harness`` and ``harness.cluster`` are namespace packages there) and a venv
    with grpcio and protobuf at the versions ``lock`` pins."""
    pins = [
        line
        for line in lock.read_text().splitlines()
        if line.split("==")[0].strip().lower() in DEVICE_PLUGIN_REQUIREMENTS
    ]
    if len(pins) != len(DEVICE_PLUGIN_REQUIREMENTS):
        raise RuntimeError(f"{lock} must pin {', '.join(DEVICE_PLUGIN_REQUIREMENTS)}")
    files = {"requirements.txt": ("\n".join(pins) + "\n").encode()}
    modules = sorted(p for p in DEVICE_PLUGIN_PACKAGE.glob("*.py") if p.name != "generate.py")
    files.update({module.name: module.read_bytes() for module in modules})
    target = "/opt/device-plugin/src/harness/cluster/device_plugin/"
    lines = [
        f"FROM {python_base}",
        "ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
        "COPY requirements.txt /tmp/requirements.txt",
        "RUN python3 -m venv /opt/device-plugin \\\n"
        " && /opt/device-plugin/bin/python -m pip install -r /tmp/requirements.txt",
        f"COPY {' '.join(module.name for module in modules)} {target}",
        "ENV PATH=/opt/device-plugin/bin:${PATH} PYTHONPATH=/opt/device-plugin/src "
        "PYTHONUNBUFFERED=1",
        'ENTRYPOINT ["python", "-m", "harness.cluster.device_plugin"]',
    ]
    return "\n".join(lines) + "\n", files


def torch_wheel() -> Path | None:
    """The local torch wheel the trainer image installs, or None (pip then downloads torch)."""
    wheel = Path(os.environ.get(TORCH_WHEEL_ENV, DEFAULT_TORCH_WHEEL))
    if wheel.is_file():
        return wheel
    say(
        f"    warning: no torch wheel at {wheel} (set {TORCH_WHEEL_ENV}); the trainer image "
        "will download torch from the package index, which can be several GB"
    )
    return None


def content_tag(parts: Iterable[bytes]) -> str:
    """A short, stable hash of ``parts`` (order matters), for an image tag."""
    digest = hashlib.sha256()
    for part in parts:
        # Length-prefixed, so that moving bytes from one part to the next changes the hash.
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()[:16]


def trainer_tag(
    repo_root: Path, python_base: str, wheel: Path | None, torch_index_url: str | None = None
) -> str:
    """The trainer image's tag: its base, every build input, the torch wheel's name and size,
    and the index a CUDA torch comes from (absent for the CPU wheel, whose tags stay as they
    were)."""
    parts = [python_base.encode()]
    for relative in image_builds.trainer_inputs(repo_root):
        parts += [str(relative).encode(), (repo_root / relative).read_bytes()]
    if wheel is not None:
        parts += [wheel.name.encode(), str(wheel.stat().st_size).encode()]
    if torch_index_url is not None:
        parts += [b"torch-index-url", torch_index_url.encode()]
    return content_tag(parts)


def trainer_torch() -> tuple[Path | None, str | None]:
    """(local wheel, index URL) of the trainer image's torch: the local CPU wheel by default;
    in the GPU profile or with ML_TESTBED_TORCH_INDEX_URL, a CUDA build from that index."""
    index_url = gpu_profile.torch_index_url()
    if index_url is not None:
        say(f"    trainer image: CUDA torch from {index_url} (several GB, cached in the image)")
        return None, index_url
    return torch_wheel(), None


def local_images() -> dict[str, str]:
    """Every ``ml-testbed/*`` image in the local daemon: name:tag -> image id."""
    listing = docker(
        "images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", "ml-testbed/*"
    )
    return dict(line.split() for line in listing.splitlines() if line.strip())


def pause_image() -> str:
    """The pause image's name, tagged by its source (built by ``ensure_images``)."""
    inputs = [PAUSE_SOURCE.read_bytes(), " ".join(image_builds.PAUSE_COMPILE_FLAGS).encode()]
    return f"{PAUSE_REPOSITORY}:{content_tag(inputs)}"


def ensure_images(repo_root: Path) -> ClusterImages:
    """Builds the images whose inputs changed (or that are missing); returns all their names."""
    with one_build_at_a_time():
        return _ensure_images(repo_root)


@contextmanager
def one_build_at_a_time() -> Iterator[None]:
    """Holds the cache's image build lock (also the kind node image's builds take it)."""
    # Two concurrent calls would both import a base (each import makes a new image id) and then
    # build two python bases and two trainers on top of them.
    path = cache_dir() / "images.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"    waiting for another process to finish the cluster images (lock: {path})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _ensure_images(repo_root: Path) -> ClusterImages:
    present = local_images()
    built: list[str] = []

    def ensure(name: str, what: str, build: Callable[[], None]) -> None:
        if name in present:
            return
        with step(f"build the {what} image {name}"):
            build()
            built_id = image_id(name)
            if built_id is None:
                raise RuntimeError(f"the build reported success but the daemon lacks {name}")
            present[name] = built_id
        built.append(name)
        remove_superseded(name, present)

    base = BASE_IMAGE
    ensure(base, "base", lambda: _build_base(base))
    dockerfile, files = python_base_recipe(base)
    recipe = [present[base].encode(), dockerfile.encode(), *files.values()]
    python_base = f"{PYTHON_BASE_REPOSITORY}:{content_tag(recipe)}"
    ensure(
        python_base,
        "python base",
        lambda: image_builds.build_with_context(python_base, dockerfile, files),
    )
    pause = pause_image()
    ensure(pause, "pause", lambda: image_builds.build_pause(pause, PAUSE_SOURCE))
    wheel, index_url = trainer_torch()
    trainer = f"{TRAINER_REPOSITORY}:{trainer_tag(repo_root, python_base, wheel, index_url)}"
    ensure(
        trainer,
        "trainer",
        lambda: image_builds.build_trainer(trainer, repo_root, python_base, wheel, index_url),
    )
    dockerfile, files = device_plugin_recipe(python_base, repo_root / "constraints" / "lock.txt")
    recipe = [python_base.encode(), dockerfile.encode()]
    recipe += [part for name, data in files.items() for part in (name.encode(), data)]
    plugin = f"{DEVICE_PLUGIN_REPOSITORY}:{content_tag(recipe)}"
    ensure(
        plugin,
        "device plugin",
        lambda: image_builds.build_with_context(plugin, dockerfile, files),
    )
    if not built:
        names = ", ".join([base, python_base, pause, trainer, plugin])
        say(f"    cluster images up to date ({names})")
    return ClusterImages(
        base=base,
        python_base=python_base,
        pause=pause,
        sidecar=base,
        trainer=trainer,
        device_plugin=plugin,
        built=tuple(built),
    )


def _build_base(name: str) -> None:
    if not image_builds.pull_and_tag(REGISTRY_BASE_IMAGE, name):
        image_builds.debootstrap_base(name)


def remove_superseded(name: str, present: dict[str, str]) -> None:
    """Untags the older builds of ``name``'s repository; those still in use by a container stay."""
    repository = name.split(":")[0]
    for other in [n for n in present if n.split(":")[0] == repository and n != name]:
        if subprocess.run(["docker", "rmi", other], capture_output=True).returncode == 0:
            say(f"    removed the superseded image {other}")
            del present[other]
