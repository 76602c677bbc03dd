"""Which device a trial trains on, and the settings that device gets."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from trainer.errors import CudaUnavailableError


def resolve_device(requested: str, require_cuda: bool) -> torch.device:
    """The device for ``--device`` (auto: CUDA when present); CudaUnavailableError if CUDA is
    required (``require_cuda`` or ``requested == "cuda"``) and this process sees none."""
    if torch.cuda.is_available():
        return torch.device("cpu" if requested == "cpu" else "cuda")
    if require_cuda or requested == "cuda":
        raise CudaUnavailableError(
            f"CUDA is required (--require-cuda or --device cuda) but torch {torch.__version__} "
            f"(built for CUDA {torch.version.cuda or 'none'}) sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). "
            "Run the pod on a GPU node with an nvidia.com/gpu limit and a CUDA build of torch, "
            "or drop --require-cuda to train on the CPU."
        )
    return torch.device("cpu")


def make_deterministic(seed: int, device: torch.device, strict_on_cuda: bool = False) -> None:
    """Seed every generator and choose the kernels: always deterministic ones on the CPU (so a
    seed repeats a CPU run bit for bit); on CUDA only when ``strict_on_cuda`` (``--deterministic``).

    On CUDA bf16 autocast rounds anyway and the deterministic variants of some kernels are
    slower, so the default there is speed; ``--deterministic`` asks for repeatable CUDA runs and
    then fails loudly on a kernel that has no deterministic variant rather than silently varying.
    """
    if device.type == "cuda" and strict_on_cuda:
        # cuBLAS is only deterministic with a fixed workspace; it must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(device.type != "cuda" or strict_on_cuda)


def configure_device(device: torch.device) -> None:
    """Speed settings: TF32 matmuls on CUDA; one intra-op CPU thread unless ``OMP_NUM_THREADS``
    asks for more.

    The pipeline's MLPs are small and its trials run in parallel pods, so extra CPU threads mostly
    wait on each other; torch also starts one per host core, ignoring the pod's CPU limit. On a
    busy two-core machine, 5 epochs of a 32x2 MLP took 10.3 s with two threads, 0.16 s with one.
    """
    if device.type == "cuda":
        # TF32 matmuls: a large speed-up on Ampere and later, well within bf16 autocast's error.
        torch.set_float32_matmul_precision("high")
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
