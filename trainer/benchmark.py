"""``python -m trainer.benchmark``: training throughput of the trainer's loop, CPU against CUDA.

For a sweep of (width, depth, batch size) it times ``trainer.training.fit`` on synthetic
in-memory tensors (the loop every trial runs: bf16 autocast on CUDA, Adam) and prints, per device
and configuration: samples/s, achieved TFLOP/s (trainer.flops), the fraction of the GPU's dense
bf16 peak, and CUDA's samples/s over the CPU's at the same configuration. ``--compile`` adds
rows trained through torch.compile. It prints figures and asserts nothing.

The CPU runs every configuration within ``--cpu-seconds`` each: fewer steps when a step is
slow, none (a "skipped" row) when even one would not fit; the CUDA/CPU ratio of a skipped
configuration is then estimated from the CPU's best achieved TFLOP/s and marked "~".
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

import torch

from trainer.contract import N_FEATURES
from trainer.device import configure_device, make_deterministic
from trainer.flops import known_bf16_peak, matmul_tflops, training_flops_per_sample
from trainer.training import build_model, build_optimizer, compiled, fit, to_device
from trainer.trial import Hyperparameters

# Warm-up steps before the timed ones: CUDA's first steps pick kernels and grow its caching
# allocator; one step is enough for the CPU, whose time is the scarce one.
WARMUP_STEPS = {"cpu": 1, "cuda": 3}
# Fraction of the CPU's fp32 matmul rate a training step reaches (Adam, ReLU, small layers):
# used only to decide how many steps fit in --cpu-seconds.
CPU_TRAINING_EFFICIENCY = 0.5
REFERENCE_MATMUL = {"cpu": 1024, "cuda": 8192}
COLUMNS: tuple[tuple[str, int], ...] = (
    ("device", 7),
    ("compile", 8),
    ("width", 7),
    ("depth", 6),
    ("batch", 7),
    ("steps", 6),
    ("samples/s", 13),
    ("TFLOP/s", 10),
    ("%peak", 8),
    ("CUDA/CPU", 10),
)


@dataclass(frozen=True)
class Config:
    """One point of the sweep: the MLP's shape and the batch size."""

    width: int
    depth: int
    batch_size: int

    @property
    def flops_per_sample(self) -> int:
        """Forward + backward FLOPs of one sample (trainer.flops)."""
        return training_flops_per_sample(N_FEATURES, self.width, self.depth)


@dataclass(frozen=True)
class Cell:
    """One measured (or skipped) row of the table."""

    device: str
    compiled: bool
    config: Config
    steps: int
    samples_per_second: float | None
    note: str = ""

    @property
    def tflops(self) -> float | None:
        """Achieved TFLOP/s, None when skipped."""
        if self.samples_per_second is None:
            return None
        return self.samples_per_second * self.config.flops_per_sample / 1e12


def sweep(widths: Sequence[int], batch_sizes: Sequence[int], depth: int) -> list[Config]:
    """Every (width, batch size) pair at one depth."""
    return [Config(w, depth, b) for w, b in itertools.product(widths, batch_sizes)]


QUICK_SWEEP = sweep((64, 256), (64, 256), depth=2)
# The large configuration is where an H100 should reach half its bf16 peak: matmuls of
# 16384 x 8192 x 8192 keep the tensor cores busy, and Adam's memory-bound update of 200 M
# parameters costs about a tenth of a step.
LARGE = Config(8192, 4, 16384)
DEFAULT_SWEEP = [*sweep((256, 1024, 4096), (256, 4096), depth=2), LARGE]


def measure(device: torch.device, config: Config, steps: int, compile_model: bool) -> float:
    """Samples/s of ``steps`` optimizer steps on random data, after a warm-up on the same model
    (so the timed steps exclude kernel selection, allocation and compilation)."""
    rows = config.batch_size * steps
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(rows, N_FEATURES, generator=generator).numpy()
    labels = torch.randint(0, 2, (rows,), generator=generator).numpy()
    features_on_device, labels_on_device = to_device(features, labels, device)
    model = build_model(N_FEATURES, config.width, config.depth).to(device)
    optimizer = build_optimizer("adam", list(model.parameters()), 1e-4)
    forward = compiled(model, device) if compile_model else model
    hyperparameters = Hyperparameters(
        1e-4, config.batch_size, "adam", 1, config.width, config.depth, 0
    )
    warm = config.batch_size * min(WARMUP_STEPS[device.type], steps)
    fit(
        model,
        optimizer,
        hyperparameters,
        features_on_device[:warm],
        labels_on_device[:warm],
        forward=forward,
    )
    timed = fit(
        model, optimizer, hyperparameters, features_on_device, labels_on_device, forward=forward
    )
    return timed.samples_per_second


def cpu_steps(config: Config, wanted: int, seconds: float, cpu_tflops: float) -> int:
    """How many timed steps of ``config`` fit in ``seconds`` on this CPU (0: not even one)."""
    step_seconds = (
        config.flops_per_sample * config.batch_size / (cpu_tflops * 1e12 * CPU_TRAINING_EFFICIENCY)
    )
    return max(0, min(wanted, int(seconds / step_seconds) - WARMUP_STEPS["cpu"]))


def run_cpu(
    configs: Sequence[Config], args: argparse.Namespace, cpu_tflops: float
) -> Iterator[Cell]:
    """The CPU's rows: eager, and compiled with ``--compile-cpu``, each within --cpu-seconds."""
    cpu = torch.device("cpu")
    make_deterministic(0, cpu)  # the kernels a CPU trial runs
    for config, compile_model in itertools.product(configs, _compile_modes(args.compile_cpu)):
        steps = cpu_steps(config, args.steps, args.cpu_seconds, cpu_tflops)
        if steps == 0:
            note = f"skipped: one step would take over {args.cpu_seconds:g} s (--cpu-seconds)"
            yield Cell("cpu", compile_model, config, 0, None, note)
            continue
        yield Cell("cpu", compile_model, config, steps, measure(cpu, config, steps, compile_model))


def run_cuda(configs: Sequence[Config], args: argparse.Namespace) -> Iterator[Cell]:
    """The GPU's rows: eager, and compiled with ``--compile``."""
    device = torch.device("cuda")
    make_deterministic(0, device)  # the kernels a CUDA trial runs without --deterministic
    for config, compile_model in itertools.product(configs, _compile_modes(args.compile)):
        rate = measure(device, config, args.steps, compile_model)
        torch.cuda.empty_cache()  # the next configuration gets the whole memory
        yield Cell("cuda", compile_model, config, args.steps, rate)


def _compile_modes(with_compile: bool) -> tuple[bool, ...]:
    return (False, True) if with_compile else (False,)


def format_row(values: Sequence[str], note: str = "") -> str:
    """One table line: device and compile left-aligned, the figures right-aligned."""
    cells = [
        value.ljust(width) if index < 2 else value.rjust(width)
        for index, (value, (_, width)) in enumerate(zip(values, COLUMNS, strict=True))
    ]
    return "".join(cells) + (f"  {note}" if note else "")


def row(cell: Cell, cpu_cells: Sequence[Cell], peak_tflops: float | None) -> str:
    """``cell`` as a table line; the ratio and %peak are for CUDA rows only."""
    config = cell.config
    measured = cell.samples_per_second is not None
    fraction = "-"
    if cell.device == "cuda" and peak_tflops and cell.tflops is not None:
        fraction = f"{cell.tflops / peak_tflops:.1%}"
    values = [
        cell.device,
        "yes" if cell.compiled else "no",
        str(config.width),
        str(config.depth),
        str(config.batch_size),
        str(cell.steps) if measured else "-",
        f"{cell.samples_per_second:,.0f}" if measured else "skipped",
        f"{cell.tflops:.3f}" if cell.tflops is not None else "-",
        fraction,
        cuda_over_cpu(cell, cpu_cells) if cell.device == "cuda" else "-",
    ]
    return format_row(values, cell.note)


def cuda_over_cpu(cell: Cell, cpu_cells: Sequence[Cell]) -> str:
    """CUDA's samples/s over the CPU's eager run of the same configuration; "~" marks an
    estimate from the CPU's best achieved TFLOP/s where the CPU skipped the configuration."""
    assert cell.samples_per_second is not None
    eager = [c for c in cpu_cells if not c.compiled and c.samples_per_second is not None]
    same = [c for c in eager if c.config == cell.config]
    if same:
        return f"{cell.samples_per_second / same[0].samples_per_second:,.1f}x"
    best = max((c.tflops for c in eager if c.tflops is not None), default=None)
    if best is None:
        return "-"
    estimated_cpu = best * 1e12 / cell.config.flops_per_sample
    return f"~{cell.samples_per_second / estimated_cpu:,.0f}x"


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options: which sweep, how long each cell runs, what to compile."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a small sweep of small models (CI)")
    parser.add_argument("--widths", type=_int_list, help="custom sweep: widths, e.g. 512,2048")
    parser.add_argument("--batch-sizes", type=_int_list, help="custom sweep: batch sizes")
    parser.add_argument("--depth", type=int, default=2, help="custom sweep: hidden layers")
    parser.add_argument(
        "--no-large", action="store_true", help=f"leave out the large configuration {LARGE}"
    )
    parser.add_argument("--steps", type=int, help="timed optimizer steps per cell (20; quick 5)")
    parser.add_argument(
        "--cpu-seconds", type=float, default=4.0, help="time a CPU cell may take (%(default)s)"
    )
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="CPU threads for the CPU rows (default: every core this process may use; trial "
        "pods use one unless OMP_NUM_THREADS says otherwise)",
    )
    parser.add_argument("--compile", action="store_true", help="also CUDA through torch.compile")
    parser.add_argument(
        "--compile-cpu", action="store_true", help="also the CPU through torch.compile (slow)"
    )
    return parser


def configs_for(args: argparse.Namespace) -> list[Config]:
    """The sweep the options select."""
    if args.widths or args.batch_sizes:
        configs = sweep(args.widths or (256,), args.batch_sizes or (256,), args.depth)
        return configs if args.no_large or args.quick else [*configs, LARGE]
    if args.quick:
        return QUICK_SWEEP
    return [c for c in DEFAULT_SWEEP if not (args.no_large and c == LARGE)]


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> None:
    """Measure the sweep and print the table (rows appear as they are measured)."""
    args = build_parser().parse_args(argv)
    args.steps = args.steps or (5 if args.quick else 20)
    out = out or sys.stdout
    configs = configs_for(args)
    cpu = torch.device("cpu")
    configure_device(cpu)
    torch.set_num_threads(args.cpu_threads)
    cpu_tflops = matmul_tflops(cpu, REFERENCE_MATMUL["cpu"], torch.float32, repeats=3)
    print(
        f"torch {torch.__version__}; CPU: {torch.get_num_threads()} thread(s), fp32 matmul "
        f"{REFERENCE_MATMUL['cpu']}^3 {cpu_tflops:.3f} TFLOP/s",
        file=out,
    )
    peak = _describe_cuda(out) if torch.cuda.is_available() else None
    print(
        "TFLOP/s = samples/s x 6 x multiply-accumulates of the Linear layers (forward+backward);"
        " %peak = TFLOP/s over the GPU's dense bf16 peak",
        file=out,
    )
    print(format_row([name for name, _ in COLUMNS]), file=out, flush=True)
    cpu_cells = []
    for cell in run_cpu(configs, args, cpu_tflops):
        cpu_cells.append(cell)
        print(row(cell, cpu_cells, None), file=out, flush=True)
    if peak is None:
        print("(no CUDA device: CPU only)", file=out)
        return
    for cell in run_cuda(configs, args):
        print(row(cell, cpu_cells, peak), file=out, flush=True)


def _describe_cuda(out: TextIO) -> float:
    """Prints the GPU, its known bf16 peak and a measured bf16 matmul; returns the peak the
    table's fraction uses (the measured matmul where the GPU's peak is not known)."""
    device = torch.device("cuda")
    configure_device(device)
    name = torch.cuda.get_device_name(device)
    size = REFERENCE_MATMUL["cuda"]
    measured = matmul_tflops(device, size, torch.bfloat16, repeats=20)
    known = known_bf16_peak(name)
    if known is None:
        print(
            f"CUDA: {name}; bf16 dense peak not known: the %peak column is relative to "
            f"the measured bf16 matmul {size}^3, {measured:.1f} TFLOP/s",
            file=out,
        )
        return measured
    model, peak = known
    print(
        f"CUDA: {name} ({model}, bf16 dense peak {peak:g} TFLOP/s); measured bf16 matmul "
        f"{size}^3: {measured:.1f} TFLOP/s ({measured / peak:.1%} of peak)",
        file=out,
    )
    return peak


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


if __name__ == "__main__":
    main()
