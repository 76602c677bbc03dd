"""``--compile``: the model through ``torch.compile``, after checking the toolchain it needs.

Off by default: compiling costs seconds to minutes up front and only pays for models large
enough that fused kernels and fewer launches outweigh it (``python -m trainer.benchmark
--compile`` measures it). torch.compile's default backend (inductor) writes C++ for the CPU and
Triton kernels for CUDA, which Triton builds with a C compiler against Python's headers; a
missing compiler would otherwise surface mid-training as a long stack trace.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

import torch
from torch import nn

from trainer.errors import CompileUnavailableError

CPP_COMPILERS = ("g++", "clang++", "c++")
C_COMPILERS = ("gcc", "clang", "cc")


def missing_toolchain(device: torch.device) -> str | None:
    """What ``torch.compile`` lacks on this machine for ``device``, or None when it has it all."""
    if device.type == "cuda":
        if not _found("CC", C_COMPILERS):
            return f"a C compiler for Triton's launcher (CC, or one of {', '.join(C_COMPILERS)})"
        headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
        if not headers.is_file():
            return f"Python's C headers for Triton ({headers}; Debian: python3-dev)"
        return None
    if not _found("CXX", CPP_COMPILERS):
        choices = ", ".join(CPP_COMPILERS)
        return f"a C++ compiler for inductor's CPU kernels (CXX, or one of {choices})"
    return None


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` compiled for ``device``; it shares ``model``'s parameters (train either, save
    ``model``). Raises CompileUnavailableError when the toolchain is missing."""
    require_toolchain(device)
    return torch.compile(model)


def require_toolchain(device: torch.device) -> None:
    """Raises CompileUnavailableError unless ``torch.compile`` can build kernels for ``device``."""
    missing = missing_toolchain(device)
    if missing is not None:
        raise CompileUnavailableError(
            f"--compile on {device.type} needs {missing}, and this machine has none "
            f"(PATH={os.environ.get('PATH', '')}). Install it, or drop --compile: it only "
            "changes speed (and rounding), not what is trained."
        )


def _found(variable: str, names: tuple[str, ...]) -> bool:
    configured = os.environ.get(variable)
    if configured:
        return shutil.which(configured) is not None
    return any(shutil.which(name) for name in names)
