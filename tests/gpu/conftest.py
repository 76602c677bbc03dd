"""Tests marked ``gpu`` skip, with one reason, where torch sees no CUDA device (CI has none)."""

import pytest
import torch


def pytest_collection_modifyitems(items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason=f"no CUDA device visible to torch {torch.__version__} "
        f"(CUDA build {torch.version.cuda or 'none'}); tests marked gpu need one"
    )
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
