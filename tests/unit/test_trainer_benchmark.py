"""``python -m trainer.benchmark``: its table in --quick mode on the CPU, and its arithmetic."""

import io

import pytest
import torch

from trainer.benchmark import (
    COLUMNS,
    LARGE,
    Cell,
    Config,
    build_parser,
    configs_for,
    cpu_steps,
    cuda_over_cpu,
    main,
)
from trainer.flops import known_bf16_peak, multiply_accumulates, training_flops_per_sample

NAMES = [name for name, _ in COLUMNS]


@pytest.fixture(scope="module")
def quick_table():
    out = io.StringIO()
    main(["--quick", "--steps", "2", "--cpu-threads", "1"], out=out)
    return out.getvalue().splitlines()


def test_quick_table_has_its_columns_and_one_cpu_row_per_configuration(quick_table):
    header = next(line for line in quick_table if line.startswith("device"))
    assert header.split() == NAMES
    rows = [line.split() for line in quick_table if line.startswith("cpu ")]
    assert [(r[2], r[4]) for r in rows] == [
        ("64", "64"),
        ("64", "256"),
        ("256", "64"),
        ("256", "256"),
    ]
    for fields in rows:
        record = dict(zip(NAMES, fields, strict=True))
        assert record["compile"] == "no"
        assert record["steps"] == "2"
        assert float(record["samples/s"].replace(",", "")) > 0
        assert float(record["TFLOP/s"]) >= 0
        assert record["%peak"] == record["CUDA/CPU"] == "-"
    if not torch.cuda.is_available():
        assert quick_table[-1] == "(no CUDA device: CPU only)"


def test_flops_are_six_multiply_accumulates_of_the_linear_layers():
    # 16 features -> 8192 -> 8192 -> 8192 -> 8192 -> 2 logits
    macs = 16 * 8192 + 3 * 8192**2 + 8192 * 2
    assert multiply_accumulates(16, 8192, 4) == macs
    assert training_flops_per_sample(16, 8192, 4) == 6 * macs


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", ("H100 SXM", 989.4)),
        ("NVIDIA H100 PCIe", ("H100 PCIe", 756.0)),
        ("NVIDIA H200", ("H200", 989.4)),
        ("NVIDIA A100-SXM4-80GB", ("A100", 312.0)),
        ("NVIDIA L40S", ("L40S", 362.0)),
        ("NVIDIA L4", ("L4", 121.0)),
        ("NVIDIA A10", ("A10", 125.0)),
        ("NVIDIA H100 NVL", None),
        ("NVIDIA L40", None),
        ("NVIDIA A10G", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_known_bf16_peaks_by_device_name(name, expected):
    assert known_bf16_peak(name) == expected


def test_cuda_over_cpu_is_measured_or_marked_as_an_estimate():
    small, large = Config(256, 2, 256), Config(8192, 4, 16384)
    cpu = [
        Cell("cpu", False, small, 20, 1000.0),
        Cell("cpu", False, large, 0, None, "skipped"),
    ]
    assert cuda_over_cpu(Cell("cuda", False, small, 20, 50_000.0), cpu) == "50.0x"
    # Large on the CPU skipped: CUDA over what the CPU's best TFLOP/s would give there.
    cpu_best = cpu[0].tflops * 1e12 / large.flops_per_sample
    estimate = cuda_over_cpu(Cell("cuda", True, large, 20, 10_000.0), cpu)
    assert estimate == f"~{10_000.0 / cpu_best:,.0f}x"


def test_cpu_skips_a_configuration_whose_single_step_exceeds_its_seconds():
    assert cpu_steps(LARGE, wanted=20, seconds=4.0, cpu_tflops=0.05) == 0
    assert cpu_steps(Config(64, 2, 64), wanted=20, seconds=4.0, cpu_tflops=0.05) == 20


def test_default_sweep_holds_the_large_configuration_quick_does_not():
    assert LARGE in configs_for(build_parser().parse_args([]))
    assert LARGE not in configs_for(build_parser().parse_args(["--quick"]))
    assert LARGE not in configs_for(build_parser().parse_args(["--no-large"]))
    custom = configs_for(build_parser().parse_args(["--widths", "512", "--batch-sizes", "8,16"]))
    assert custom == [Config(512, 2, 8), Config(512, 2, 16), LARGE]
