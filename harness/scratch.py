"""Temporary folders of the harness, named after the process that owns them.

``tempfile.TemporaryDirectory`` cleans up in ``finally``, which a ``kill -9`` never reaches. A
scratch folder's name carries its owner's pid and start time instead, so the next ``up`` or
``down`` (any process, any time) can tell a leftover from a folder still in use and remove it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.cluster.local_up_nodes import unmount_below
from harness.paths import cache_dir, private_dir, remove_owned, scratch_root
from harness.processes import start_time

_PREFIX = "mltb-"
_NAME = re.compile(r"^mltb-.+-(?P<pid>\d+)\.(?P<started>\d+)-[0-9a-f]{8}$")


def _owner_tag() -> str:
    pid = os.getpid()
    return f"{pid}.{start_time(pid)}"


@contextmanager
def scratch_dir(purpose: str, under: Path | None = None) -> Iterator[Path]:
    """A new folder for ``purpose`` under ``under`` (default: the scratch root), always removed.

    Image builds put theirs next to the cache (same disk, so hard links work).
    """
    parent = under or scratch_root()
    private_dir(parent)
    path = parent / f"{_PREFIX}{purpose}-{_owner_tag()}-{secrets.token_hex(4)}"
    # parents: a concurrent sweep may have removed an empty parent a moment ago.
    path.mkdir(mode=0o700, parents=True)
    try:
        yield path
    finally:
        _remove(path)


def _remove(path: Path) -> None:
    # A debootstrap or kubelet that died half-way can leave mounts inside the folder.
    unmount_below(path)
    remove_owned(path)


def leftovers(roots: tuple[Path, ...] | None = None) -> list[Path]:
    """Scratch folders whose owner process is gone."""
    found = []
    for root in roots or (scratch_root(), cache_dir()):
        if not root.is_dir():
            continue
        for path in root.iterdir():
            match = _NAME.match(path.name)
            if match and start_time(int(match["pid"])) != match["started"]:
                found.append(path)
    return sorted(found)


def sweep(roots: tuple[Path, ...] | None = None) -> list[Path]:
    """Removes the scratch folders of dead owners (a crash, a ``kill -9``); returns them."""
    removed = leftovers(roots)
    for path in removed:
        _remove(path)
    # The scratch root itself goes too once nothing is in it (nobody else's folder is touched).
    with contextlib.suppress(OSError):
        scratch_root().rmdir()
    return removed
