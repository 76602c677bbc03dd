"""Tests marked ``gpu`` need a CUDA device: they skip with one reason where torch sees none, and
fail instead where the GPU is required (CI=true or ML_TESTBED_REQUIRE=gpu): a nightly GPU job on a
runner that installed a CPU torch must not pass having run nothing."""

import pytest
import torch

from harness.requirements import is_required, why_required


def _no_cuda() -> str:
    return (
        f"no CUDA device visible to torch {torch.__version__} "
        f"(CUDA build {torch.version.cuda or 'none'}); tests marked gpu need one"
    )


def pytest_collection_modifyitems(items):
    if torch.cuda.is_available() or is_required("gpu"):
        return
    skip = pytest.mark.skip(reason=_no_cuda())
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Before any fixture: the test's own setup would fail for a less clear reason.
    if item.get_closest_marker("gpu") and not torch.cuda.is_available() and is_required("gpu"):
        pytest.fail(
            f"{_no_cuda()}; {why_required('gpu')} requires the gpu, so this fails, not skips"
        )
