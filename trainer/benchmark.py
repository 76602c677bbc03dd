"""``python -m trainer.benchmark``: training throughput (samples/second) by width and batch size.

Synthetic in-memory tensors through the same loop ``train`` uses, on the CPU and, when present,
on CUDA. It prints figures and asserts nothing: compare runs of the same machine.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from trainer.contract import N_FEATURES
from trainer.device import configure_device, make_deterministic
from trainer.training import to_device, train_model
from trainer.trial import Hyperparameters

WIDTHS = (64, 256, 1024)
BATCH_SIZES = (64, 256, 1024)


def throughput(
    device: torch.device, rows: int, epochs: int, hidden_width: int, batch_size: int
) -> float:
    """Samples per second of ``train_model`` over random data (after a one-epoch warm-up)."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(rows, N_FEATURES, generator=generator).numpy()
    labels = torch.randint(0, 2, (rows,), generator=generator).numpy()
    features_on_device, labels_on_device = to_device(features, labels, device)

    def run(run_epochs: int) -> float:
        hyperparameters = Hyperparameters(1e-3, batch_size, "adam", run_epochs, hidden_width, 2, 0)
        return train_model(hyperparameters, features_on_device, labels_on_device).samples_per_second

    # The first epoch pays for kernel selection and allocation; it is not what trials see.
    run(1)
    return run(epochs)


def devices() -> list[torch.device]:
    """The CPU, and the first GPU when CUDA is available."""
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda"))
    return found


def main(argv: Sequence[str] | None = None) -> None:
    """Print one row per device and width, one column per batch size."""
    parser = argparse.ArgumentParser(prog="python -m trainer.benchmark", description=__doc__)
    parser.add_argument("--rows", type=int, default=16384, help="synthetic rows per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per cell")
    args = parser.parse_args(argv)
    configure_device(torch.device("cpu"))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s) (OMP_NUM_THREADS), "
        f"{args.rows} rows x {args.epochs} epochs, depth 2"
    )
    print(f"{'device':<8}{'width':>7}" + "".join(f"{f'batch {b}':>14}" for b in BATCH_SIZES))
    for device in devices():
        configure_device(device)
        make_deterministic(0, device)
        for width in WIDTHS:
            cells = [
                throughput(device, args.rows, args.epochs, width, batch_size)
                for batch_size in BATCH_SIZES
            ]
            print(f"{device.type:<8}{width:>7}" + "".join(f"{cell:>14,.0f}" for cell in cells))
    if not torch.cuda.is_available():
        print("(no CUDA device: CPU only)")


if __name__ == "__main__":
    main()
