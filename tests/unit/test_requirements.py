"""A suite that cannot run skips on a laptop and fails in CI or where its part is required."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.pipeline_settings import REPO_ROOT
from harness.requirements import required_parts
from tests.requirements import unavailable


@pytest.mark.parametrize(
    ("environ", "parts"),
    [
        ({}, set()),
        ({"CI": "false"}, set()),
        ({"CI": "true"}, {"stack", "gpu"}),
        ({"ML_TESTBED_REQUIRE": "stack"}, {"stack"}),
        ({"ML_TESTBED_REQUIRE": " gpu, stack "}, {"stack", "gpu"}),
        ({"CI": "true", "ML_TESTBED_REQUIRE": "gpu_cluster"}, {"stack", "gpu", "gpu_cluster"}),
    ],
)
def test_what_is_required_follows_ci_and_the_setting(environ, parts):
    assert required_parts(environ) == parts


def test_an_unknown_part_is_named_with_what_to_write():
    with pytest.raises(ValueError, match=r"ML_TESTBED_REQUIRE names cuda: use stack, gpu, gpu_"):
        required_parts({"ML_TESTBED_REQUIRE": "cuda"})


def test_a_missing_stack_skips_on_a_laptop(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("ML_TESTBED_REQUIRE", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no engine"):
        unavailable("stack", "no engine")


@pytest.mark.parametrize("environ", [{"CI": "true"}, {"ML_TESTBED_REQUIRE": "stack"}])
def test_a_missing_stack_fails_where_it_is_required(monkeypatch, environ):
    monkeypatch.delenv("CI", raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(pytest.fail.Exception, match=r"no engine; .* requires the stack"):
        unavailable("stack", "no engine")


def _gpu_suite(**environ: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ML_TESTBED_REQUIRE")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/gpu", "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=REPO_ROOT,
        env={**env, "CUDA_VISIBLE_DEVICES": "", **environ},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_gpu_suite_without_cuda_skips_here_and_fails_where_the_gpu_is_required():
    laptop = _gpu_suite()
    assert laptop.returncode == 0, laptop.stdout
    assert "skipped" in laptop.stdout and "no CUDA device visible" in laptop.stdout
    nightly = _gpu_suite(ML_TESTBED_REQUIRE="gpu")
    assert nightly.returncode != 0, nightly.stdout
    assert "ML_TESTBED_REQUIRE=gpu requires the gpu, so this fails, not skips" in nightly.stdout
    assert "passed" not in nightly.stdout.splitlines()[-1]
