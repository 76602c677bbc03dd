"""Where the harness keeps what survives between runs (cache) and what one stack owns (state)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Built binaries and image inputs, reused across runs; never removed by ``down``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ml-testbed"
    return Path(os.environ.get("ML_TESTBED_CACHE", default))


def state_root() -> Path:
    """Where every stack's state folder and the scratch folders live."""
    return Path(os.environ.get("ML_TESTBED_STATE", "/tmp/ml-testbed"))


def state_dir(name: str) -> Path:
    """What one running cluster or stack owns (pids, certs, data, logs); ``down`` removes it."""
    return state_root() / name


def scratch_root() -> Path:
    """Temporary folders of harness processes (harness.scratch); leftovers are swept."""
    return state_root() / "scratch"
