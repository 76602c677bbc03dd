"""Facts about the host and the Debian packages the harness installs on it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.locks import held
from harness.paths import cache_dir
from harness.steps import run, say


def is_debian_like() -> bool:
    """Debian or Ubuntu, where the harness may install what it needs with apt."""
    return Path("/etc/debian_version").exists() and shutil.which("apt-get") is not None


def can_install_packages() -> bool:
    """Root on a Debian-like host."""
    return os.geteuid() == 0 and is_debian_like()


def missing_packages(packages: list[str]) -> list[str]:
    """The Debian packages of ``packages`` that are not installed."""
    missing = []
    for package in packages:
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
        )
        if "install ok installed" not in status.stdout:
            missing.append(package)
    return missing


def apt_install(
    packages: list[str], *, why: str, otherwise: str = "or use another cluster provider"
) -> None:
    """Installs the missing ones of ``packages``, or says what to install when it cannot."""
    missing = missing_packages(packages)
    if not missing:
        return
    if not can_install_packages():
        raise RuntimeError(
            f"{why} needs the packages {', '.join(missing)}; install them (as root: "
            f"apt-get install {' '.join(missing)}) {otherwise}"
        )
    with apt_lock():
        missing = missing_packages(missing)  # another process may have installed them meanwhile
        if not missing:
            return
        say(f"    installing {' '.join(missing)} ({why})")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        try:
            run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)
        except Exception:
            run(["apt-get", "update"], env=env)
            run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)


@contextmanager
def apt_lock() -> Iterator[None]:
    """One apt-get at a time among the harness's processes: the images built beside the
    cluster's creation install their packages while the creation installs its own, and apt-get
    fails at once on a lock another apt-get holds rather than waiting for it."""

    def waiting() -> None:
        say("    waiting for another harness process's apt-get")

    with held(cache_dir() / "apt.lock", waiting=waiting):
        yield
