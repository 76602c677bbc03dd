"""Whether a missing part (a container engine and stack, or a CUDA device) skips or fails.

On a laptop a suite that cannot run skips with its reason. In CI (``CI=true``), or where
``ML_TESTBED_REQUIRE`` names the part (comma-separated), it fails: a green run that ran nothing
would hide exactly the machine problem it should report. The parts: ``stack`` (a container
engine and a cluster the harness can make), ``gpu`` (a CUDA device for torch), and
``gpu_cluster`` (a GPU cluster for the GPU profile's scenarios, ``ML_TESTBED_KUBECONFIG``).
CI requires the first two; a GPU cluster only where a job names it, since a GPU runner may have
a GPU and no cluster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

REQUIRE_ENV = "ML_TESTBED_REQUIRE"
PARTS = ("stack", "gpu", "gpu_cluster")
CI_PARTS = ("stack", "gpu")


def required_parts(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The parts that must be there; ValueError naming the setting for an unknown part."""
    environ = os.environ if environ is None else environ
    named = {part.strip() for part in environ.get(REQUIRE_ENV, "").split(",") if part.strip()}
    unknown = sorted(named - set(PARTS))
    if unknown:
        raise ValueError(
            f"${REQUIRE_ENV} names {', '.join(unknown)}: use {', '.join(PARTS)}, "
            "comma-separated (e.g. ML_TESTBED_REQUIRE=stack,gpu)"
        )
    if environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        named.update(CI_PARTS)
    return frozenset(named)


def is_required(part: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether a missing ``part`` must fail rather than skip."""
    return part in required_parts(environ)


def why_required(part: str, environ: Mapping[str, str] | None = None) -> str:
    """Which setting requires ``part`` here, for the failure message."""
    environ = os.environ if environ is None else environ
    if part in required_parts({**environ, "CI": ""}):
        return f"{REQUIRE_ENV}={environ[REQUIRE_ENV]}"
    return "CI=true"
