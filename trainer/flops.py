"""FLOP arithmetic of the trainer's MLP, known bf16 peaks of GPUs, and a matmul reference.

Achieved TFLOP/s = samples/s x FLOPs per sample, with the usual 6 x multiply-accumulates per
sample for forward + backward (2 for the forward's MACs, 4 for the two gradient matmuls). The
first layer's input gradient is never computed (features need none), so this slightly
over-counts tiny-width models; at the widths where the fraction of peak matters it is exact to
well under 1%.
"""

from __future__ import annotations

import re
import time

import torch

from trainer.training import N_CLASSES

# Dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s. First match
# wins, so the more specific names come first; an H100 NVL (a different peak) stays unknown.
BF16_DENSE_PEAKS: tuple[tuple[str, str, float], ...] = (
    (r"H100.*PCIe", "H100 PCIe", 756.0),
    (r"H200", "H200", 989.4),
    (r"H100(?!.*NVL)", "H100 SXM", 989.4),
    (r"A100", "A100", 312.0),
    (r"L40S", "L40S", 362.0),
    (r"\bL4\b", "L4", 121.0),
    (r"\bA10\b", "A10", 125.0),
)


def known_bf16_peak(device_name: str) -> tuple[str, float] | None:
    """(model, dense bf16 TFLOP/s) for a CUDA device name such as "NVIDIA H100 80GB HBM3"."""
    for pattern, model, peak in BF16_DENSE_PEAKS:
        if re.search(pattern, device_name):
            return model, peak
    return None


def multiply_accumulates(n_features: int, hidden_width: int, depth: int) -> int:
    """MACs of one sample through the Linear layers of ``build_model`` (biases left out)."""
    return n_features * hidden_width + (depth - 1) * hidden_width**2 + hidden_width * N_CLASSES


def training_flops_per_sample(n_features: int, hidden_width: int, depth: int) -> int:
    """FLOPs of one sample's forward + backward: 6 x its multiply-accumulates."""
    return 6 * multiply_accumulates(n_features, hidden_width, depth)


def matmul_tflops(device: torch.device, size: int, dtype: torch.dtype, repeats: int = 10) -> float:
    """Achieved TFLOP/s of ``size``^3 matmuls in ``dtype`` on ``device`` (a measured reference)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    torch.matmul(a, b)  # library initialisation and kernel selection are not timed
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    _synchronize(device)
    seconds = time.perf_counter() - started
    return 2 * size**3 * repeats / seconds / 1e12


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
