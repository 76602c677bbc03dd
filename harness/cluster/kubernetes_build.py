"""Builds Kubernetes from Debian bookworm's source package, once; later runs use the cache.

Where no registry is reachable, kind's node image cannot be pulled and no Kubernetes binaries can
be downloaded, but Debian ships the full upstream tree (1.20.5+really1.20.2, with vendor/) as a
source package. Two fixes make it run here (see ../shared/notes/platform.md):

1. the vendored modern-go/reflect2 1.0.1 crashes kube-apiserver under Go >= 1.18; Debian's
   packaged reflect2 1.0.2 sources replace it;
2. the kubelet's dockershim sets negative oom_score_adj values, which a process without
   CAP_SYS_RESOURCE may not set; they become 0.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from harness.host import apt_install, apt_lock
from harness.paths import remove_owned
from harness.steps import run, say, step

KUBERNETES_VERSION = "1.20.2"
# local-up runs the first four as host processes; a kind node image needs all of them.
COMPONENTS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubeadm",
    "kubectl",
)
BUILD_PACKAGES = [
    "golang-go",
    "rsync",
    "jq",
    "make",
    "dpkg-dev",
    "golang-github-modern-go-reflect2-dev",
]
SOURCES_LIST = Path("/etc/apt/sources.list.d/ml-testbed-deb-src.sources")
SOURCES_ENTRY = """\
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
REFLECT2_PACKAGED = Path("/usr/share/gocode/src/github.com/modern-go/reflect2")
# (file, constant) pairs whose negative oom_score_adj values become 0.
OOM_CONSTANTS = (
    ("pkg/kubelet/dockershim/docker_sandbox.go", "defaultSandboxOOMAdj"),
    ("pkg/kubelet/qos/policy.go", "guaranteedOOMScoreAdj"),
)


def binaries_dir(cache: Path) -> Path:
    """Where the built binaries of KUBERNETES_VERSION live in the cache."""
    return cache / f"kubernetes-v{KUBERNETES_VERSION}" / "bin"


def cached(cache: Path) -> bool:
    """Whether every component is already built."""
    return all((binaries_dir(cache) / name).is_file() for name in COMPONENTS)


def ensure_binaries(cache: Path) -> Path:
    """The directory holding kube-apiserver, -controller-manager, -scheduler and kubelet."""
    target = binaries_dir(cache)
    if cached(cache):
        say(f"    kubernetes v{KUBERNETES_VERSION} binaries cached in {target}")
        return target
    build_root = cache / "kubernetes-build"
    remove_owned(build_root)
    build_root.mkdir(parents=True)
    log = cache / "kubernetes-build.log"
    log.unlink(missing_ok=True)
    try:
        with step("install the Go toolchain and Kubernetes' build tools"):
            _enable_deb_src()
            apt_install(BUILD_PACKAGES, why="building Kubernetes from Debian's source package")
        with step("fetch Debian's kubernetes source package"):
            source = _fetch_source(build_root, log)
        with step("apply the reflect2 and oom_score_adj fixes"):
            _apply_fixes(source)
        with step(f"compile Kubernetes v{KUBERNETES_VERSION} (about 12 min on 2 cores; log {log})"):
            _compile(source, log)
        staging = target.with_name("bin.partial")
        remove_owned(staging)
        staging.mkdir(parents=True)
        for name in COMPONENTS:
            shutil.copy2(source / "_output" / "bin" / name, staging / name)
        remove_owned(target)
        staging.rename(target)
    finally:
        # The build tree is 3 GB; only the binaries are worth keeping.
        remove_owned(build_root)
    return target


def _enable_deb_src() -> None:
    if SOURCES_LIST.exists() and SOURCES_LIST.read_text() == SOURCES_ENTRY:
        return
    SOURCES_LIST.write_text(SOURCES_ENTRY)
    with apt_lock():
        run(["apt-get", "update"], env={"DEBIAN_FRONTEND": "noninteractive"})


def _fetch_source(build_root: Path, log: Path) -> Path:
    with apt_lock():  # it reads the package lists an apt-get update may be rewriting
        run(["apt-get", "source", "--download-only", "kubernetes"], cwd=build_root, log=log)
    (dsc,) = build_root.glob("kubernetes_*.dsc")
    source = build_root / "src"
    run(["dpkg-source", "--no-check", "-x", dsc.name, str(source)], cwd=build_root, log=log)
    return source


def _apply_fixes(source: Path) -> None:
    vendored = source / "vendor/github.com/modern-go/reflect2"
    if not REFLECT2_PACKAGED.is_dir():
        raise RuntimeError(
            f"{REFLECT2_PACKAGED} is missing: is golang-github-modern-go-reflect2-dev installed?"
        )
    remove_owned(vendored)
    shutil.copytree(REFLECT2_PACKAGED, vendored)
    for relative, constant in OOM_CONSTANTS:
        path = source / relative
        text = path.read_text()
        fixed, count = re.subn(rf"(\b{constant}\b[^=\n]*=\s*)-\d+", r"\g<1>0", text)
        if count != 1:
            raise RuntimeError(f"expected one negative {constant} in {path}, found {count}")
        path.write_text(fixed)


def _compile(source: Path, log: Path) -> None:
    env = {
        "CGO_ENABLED": "0",
        "GOPROXY": "off",
        "KUBE_GIT_VERSION": f"v{KUBERNETES_VERSION}",
        "KUBE_GIT_MAJOR": KUBERNETES_VERSION.split(".")[0],
        "KUBE_GIT_MINOR": KUBERNETES_VERSION.split(".")[1],
        "KUBE_GIT_TREE_STATE": "clean",
        "GOCACHE": str(source / ".gocache"),
        "HOME": os.environ.get("HOME", "/root"),
    }
    run(
        ["make", f"WHAT={' '.join('cmd/' + name for name in COMPONENTS)}"],
        cwd=source,
        env=env,
        log=log,
    )
