"""How each cluster image is made from local inputs, with no registry needed.

harness.cluster.images decides which images to build (by the hash of their inputs); this module
only knows how. Every build logs to ``cache_dir()/logs/image-NAME.log``.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tarfile
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path

from harness import scratch
from harness.cluster.engine import docker, pipe
from harness.host import apt_install, can_install_packages
from harness.paths import cache_dir
from harness.steps import run, say

# The docker CLI here has no buildx; the legacy builder works, and with BuildKit off it does not
# turn the "legacy builder is deprecated" notice into an error.
BUILD_ENV = {"DOCKER_BUILDKIT": "0"}
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
REGISTRY_PULL_TIMEOUT_S = 30
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PAUSE_COMPILE_FLAGS = ("-Os", "-static", "-s")


def build_log(name: str) -> Path:
    """The log of the builds of the image ``name`` (any tag)."""
    repository = name.split(":")[0].replace("/", "-")
    return cache_dir() / "logs" / f"image-{repository}.log"


def scratch_dir(prefix: str) -> AbstractContextManager[Path]:
    """A temporary folder next to the cache (same disk, so hard links work), always removed."""
    return scratch.scratch_dir(prefix.rstrip("-"), under=cache_dir())


def pull_and_tag(source: str, name: str) -> bool:
    """Pulls ``source`` and tags it ``name``; False when no registry delivers it in time."""
    try:
        pulled = subprocess.run(
            ["docker", "pull", source], capture_output=True, timeout=REGISTRY_PULL_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return False
    if pulled.returncode != 0:
        return False
    docker("tag", source, name)
    return True


def debootstrap_base(name: str) -> None:
    """A minimal Debian root made with debootstrap, imported as the image ``name``."""
    apt_install(["debootstrap"], why=f"the base image {name} (no registry to pull one from)")
    log = build_log(name)
    say(f"    debootstrap {DEBIAN_SUITE} from {DEBIAN_MIRROR} (log: {log})")
    with scratch_dir("debootstrap-") as root:
        run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(root), DEBIAN_MIRROR], log=log)
        # Package archives and lists are dead weight in an image; builds run apt-get update.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        pipe(
            ["tar", "--numeric-owner", "-C", str(root), "-c", "."],
            [
                "docker",
                "import",
                "--change",
                f"ENV PATH={IMAGE_PATH}",
                "--change",
                'CMD ["bash"]',
                "-",
                name,
            ],
        )


def build_with_context(name: str, dockerfile: str, files: Mapping[str, bytes]) -> None:
    """``docker build`` of ``dockerfile`` with a context holding only ``files`` (name: content)."""
    log = build_log(name)
    say(f"    docker build (log: {log})")
    with scratch_dir("context-") as context:
        (context / "Dockerfile").write_text(dockerfile)
        for file_name, content in files.items():
            (context / file_name).write_bytes(content)
        run(["docker", "build", "--force-rm", "-t", name, str(context)], log=log, env=BUILD_ENV)


def host_ca_bundle() -> Path | None:
    """The CA certificates this host trusts, in one file, if it has such a file.

    Where the network inspects TLS (as on the project's machine), only the host's trust store
    holds the inspecting CA, and pip inside a build fails without it.
    """
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_pause(name: str, source: Path) -> None:
    """Compiles ``source`` statically and imports an image holding only ``/pause``."""
    if can_install_packages():
        apt_install(["gcc", "libc6-dev"], why="the pause image (a static C program)")
    elif shutil.which("gcc") is None:
        raise RuntimeError(
            f"the pause image {name} is compiled from {source} and needs gcc with a static C "
            "library (Debian: gcc libc6-dev; Fedora: gcc glibc-static); install them"
        )
    with scratch_dir("pause-") as work:
        binary = work / "pause"
        run(["gcc", *PAUSE_COMPILE_FLAGS, "-o", str(binary), str(source)], log=build_log(name))
        tarball = work / "pause.tar"
        with tarfile.open(tarball, "w") as archive:
            archive.add(binary, arcname="pause", filter=_owned_by_root)
        docker("import", "--change", 'ENTRYPOINT ["/pause"]', str(tarball), name)


def _owned_by_root(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.uid = member.gid = 0
    member.uname = member.gname = "root"
    return member


def trainer_inputs(repo_root: Path) -> list[Path]:
    """What the trainer image is built from, relative to ``repo_root`` (trainer/Dockerfile too)."""
    files = [Path("pyproject.toml")]
    for folder in ("constraints", "trainer"):
        files += [
            path.relative_to(repo_root)
            for path in (repo_root / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        ]
    return sorted(files)


def build_trainer(
    name: str,
    repo_root: Path,
    base: str,
    torch_wheel: Path | None,
    torch_index_url: str | None = None,
) -> None:
    """``docker build -f trainer/Dockerfile`` from a context holding only the trainer's inputs.

    The repository itself is not the context: it holds virtualenvs and caches of gigabytes.
    ``torch_index_url`` (the GPU profile's CUDA torch) becomes the TORCH_INDEX_URL build argument.
    """
    log = build_log(name)
    with scratch_dir("trainer-context-") as context:
        for relative in trainer_inputs(repo_root):
            (context / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo_root / relative, context / relative)
        # pyproject.toml names README.md as the package's description; a stub keeps README
        # edits from rebuilding the image (it is not among the hashed inputs).
        (context / "README.md").write_text("The trainer of airflow-ml-testbed.\n")
        wheels = context / "wheels"
        wheels.mkdir()
        if torch_wheel is not None:
            link_or_copy(torch_wheel, wheels / torch_wheel.name)
        say(f"    docker build -f trainer/Dockerfile, FROM {base} (log: {log})")
        run(
            [
                "docker",
                "build",
                "--force-rm",
                "-f",
                str(context / "trainer" / "Dockerfile"),
                "-t",
                name,
                "--build-arg",
                f"BASE_IMAGE={base}",
                "--build-arg",
                "TORCH_WHEEL_DIR=wheels",
                *(["--build-arg", f"TORCH_INDEX_URL={torch_index_url}"] if torch_index_url else []),
                str(context),
            ],
            log=log,
            env=BUILD_ENV,
        )


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link of ``source`` at ``target`` (same disk), else a copy keeping its mode."""
    try:
        os.link(source, target)
    except OSError:  # another file system, or no permission to link: copy (190 MB for torch)
        shutil.copy2(source, target)
