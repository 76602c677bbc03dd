"""The throughput figures on CUDA: ``python -m trainer.benchmark --compile``, kept in reports/.

It asserts only that the table has a CUDA row per configuration; the figures are for people
(docs/gpu.md states the targets). Skips with its reason where torch sees no CUDA device.
"""

import io
from pathlib import Path

import pytest

from trainer.benchmark import DEFAULT_SWEEP, main

pytestmark = pytest.mark.gpu
REPORT = Path(__file__).resolve().parents[2] / "reports" / "gpu" / "benchmark.txt"


def test_benchmark_prints_cuda_rows_eager_and_compiled():
    out = io.StringIO()
    main(["--compile"], out=out)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(out.getvalue())
    print(out.getvalue())
    cuda_rows = [line for line in out.getvalue().splitlines() if line.startswith("cuda ")]
    assert len(cuda_rows) == 2 * len(DEFAULT_SWEEP)
