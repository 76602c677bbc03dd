"""Where the harness keeps what survives between runs (cache) and what one stack owns (state).

The harness runs as root and removes folders on ``down``; every removal goes through
``remove_owned``, which refuses anything that is not strictly inside a folder the harness owns.
Names (stack, cluster) are checked before they become a path.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

# A DNS label (it also names containers, kind clusters and bridges), short enough for all of them.
NAME_PATTERN = re.compile(r"[a-z]([a-z0-9-]{0,30}[a-z0-9])?")
# The file saying the harness made the state root (so it may make the root private).
MARKER = ".ml-testbed-state"
# Folders of the state root that are not stacks.
RESERVED_NAMES = frozenset({"scratch"})
STATE_ENV = "ML_TESTBED_STATE"
CACHE_ENV = "ML_TESTBED_CACHE"
# Where the GPU node's docker daemon keeps its sockets and pid files.
RUNTIME_DIR = Path("/run/ml-testbed")


class UnsafePath(ValueError):
    """A name or a folder the harness refuses to use: it could reach beyond its own state."""


def check_name(name: str, what: str = "stack") -> str:
    """``name`` if it is a valid stack or cluster name, else UnsafePath saying what is allowed."""
    if name in RESERVED_NAMES:
        raise UnsafePath(f"{what} name {name!r} is the harness's own folder; choose another name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UnsafePath(
            f"{what} name {name!r} is not allowed: use 1-32 lower-case letters, digits and '-', "
            "starting with a letter and not ending with '-' (e.g. ml-testbed)"
        )
    return name


def _dedicated(root: Path, setting: str) -> Path:
    resolved = root.expanduser().resolve()
    if len(resolved.parts) < 3 or resolved == Path.home().resolve():
        raise UnsafePath(
            f"${setting}={root} is not a folder of its own: the harness removes what it puts "
            f"there, so point {setting} at a dedicated folder such as /tmp/ml-testbed"
        )
    return resolved


def cache_dir() -> Path:
    """Built binaries and image inputs, reused across runs; never removed by ``down``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ml-testbed"
    return _dedicated(Path(os.environ.get(CACHE_ENV) or default), CACHE_ENV)


def state_root() -> Path:
    """Where every stack's state folder and the scratch folders live."""
    return _dedicated(Path(os.environ.get(STATE_ENV) or "/tmp/ml-testbed"), STATE_ENV)


def state_dir(name: str) -> Path:
    """What one running cluster or stack owns (pids, certs, data, logs); ``down`` removes it."""
    return state_root() / check_name(name)


def lease_file(name: str) -> Path:
    """The lease of stack or cluster ``name`` (harness.locks.Lease): beside its state folder,
    since a lock file is never removed."""
    return state_root() / f"{check_name(name)}.lease"


def up_lock_file(name: str) -> Path:
    """The lock that lets one process at a time bring stack ``name`` up (beside its lease)."""
    return state_root() / f"{check_name(name)}.up.lock"


def scratch_root() -> Path:
    """Temporary folders of harness processes (harness.scratch); leftovers are swept."""
    return state_root() / "scratch"


def owned_roots() -> tuple[Path, ...]:
    """The folders inside which the harness may remove things (RUNTIME_DIR itself too)."""
    return (state_root(), cache_dir(), RUNTIME_DIR)


def check_owned(path: Path) -> Path:
    """``path`` resolved, if it is a folder the harness owns or lies inside one; else UnsafePath.

    The state and cache roots themselves are never removed (a user may have pointed them at a
    folder holding other things); the GPU runtime folder is the harness's alone.
    """
    path = Path(path)
    # A link is removed itself, never what it points at.
    resolved = path.parent.resolve() / path.name if path.is_symlink() else path.resolve()
    for root in owned_roots():
        if resolved.is_relative_to(root) and (resolved != root or root == RUNTIME_DIR):
            return resolved
    raise UnsafePath(
        f"refusing to remove {path}: it is not inside the harness's own folders "
        f"({', '.join(str(root) for root in owned_roots())})"
    )


def remove_owned(path: Path) -> None:
    """Removes the folder (or file) ``path``, which must be inside the harness's own folders."""
    resolved = check_owned(path)
    if resolved.is_dir() and not resolved.is_symlink():
        shutil.rmtree(resolved, ignore_errors=True)
    else:
        resolved.unlink(missing_ok=True)


def private_dir(path: Path) -> Path:
    """``path`` made readable by its owner only: the folders this call creates, the folder
    itself when it lies in the state root, and the state root the harness made (a stack's state
    holds keys and tokens). A link, or a folder of another user, in the state root is refused:
    the harness runs as root and must not be steered elsewhere."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    root = state_root()
    if root in missing:
        (root / MARKER).touch(mode=0o600)
    # Lexically: a link inside the state root must be seen as one, not followed out of it.
    inside = Path(os.path.abspath(path)).is_relative_to(root)
    if inside:
        _check_in_state_root(path, root)
    # mkdir's mode goes through the umask, and an existing folder keeps its own: set them.
    private = {*missing, *([path] if inside and path != root else [])}
    if (root / MARKER).exists():
        private.add(root)
    for folder in private:
        folder.chmod(0o700)
    return path


def _check_in_state_root(path: Path, root: Path) -> None:
    """Refuses links and other users' folders between the state root and ``path``."""
    for folder in (path, *path.parents):
        if folder.is_symlink() or (folder.exists() and folder.lstat().st_uid != os.getuid()):
            raise UnsafePath(
                f"{folder} is a link or belongs to another user; the harness keeps its state "
                f"only in folders of its own. Remove it, or set {STATE_ENV} to another folder"
            )
        if folder == root:
            return


def write_private(path: Path, content: str | bytes) -> Path:
    """Writes a secret to ``path``: mode 0600 from its first byte, never readable by others."""
    path = Path(path)
    private_dir(path.parent)
    data = content.encode() if isinstance(content, str) else content
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        # An older file keeps its mode through O_CREAT: narrow it before writing.
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, data)
    finally:
        os.close(descriptor)
    return path
