"""The model, its training loop and its evaluation; no I/O (train and benchmark share them).

The loop keeps the whole dataset on the training device (the pipeline's tables are small) and
shuffles with a seeded permutation drawn on the CPU, so a seed gives the same batches on every
device. The loss is summed on the device and read back once per epoch: a per-step ``.item()``
would stall the GPU on every batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainer.errors import TrainingDivergedError
from trainer.trial import OPTIMIZERS, Hyperparameters

N_CLASSES = 2
# SGD without momentum barely moves in a few epochs; momentum is fixed, not a searched parameter.
SGD_MOMENTUM = 0.9
_EVALUATION_BATCH = 8192


@dataclass(frozen=True)
class TrainedModel:
    """A fitted model with its per-epoch mean training loss and the loop's wall time."""

    model: nn.Module
    epoch_losses: list[float]
    seconds: float
    samples_per_second: float


@dataclass(frozen=True)
class Evaluation:
    """Test metrics: accuracy, F1 of class 1, mean cross-entropy."""

    accuracy: float
    f1: float
    loss: float


def build_model(n_features: int, hidden_width: int, depth: int) -> nn.Sequential:
    """An MLP: ``depth`` ReLU layers of ``hidden_width``, then 2 logits.

    Plain ``nn.Sequential`` so the pickled model loads anywhere torch is, without this package.
    """
    layers: list[nn.Module] = []
    width_in = n_features
    for _ in range(depth):
        layers += [nn.Linear(width_in, hidden_width), nn.ReLU()]
        width_in = hidden_width
    layers.append(nn.Linear(width_in, N_CLASSES))
    return nn.Sequential(*layers)


def build_optimizer(
    name: str, parameters: list[nn.Parameter], learning_rate: float
) -> torch.optim.Optimizer:
    """The optimizer called ``name`` (one of OPTIMIZERS)."""
    if name == "adam":
        return torch.optim.Adam(parameters, lr=learning_rate)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=learning_rate)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=learning_rate, momentum=SGD_MOMENTUM)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def to_device(
    features: np.ndarray, labels: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (float32) and labels (int64) as tensors on ``device``.

    On CUDA the copy goes from pinned memory without blocking the host.
    """
    # Copies: pandas hands out read-only arrays, which torch.from_numpy warns about.
    features_tensor = torch.tensor(features, dtype=torch.float32)
    labels_tensor = torch.tensor(labels, dtype=torch.int64)
    if device.type != "cuda":
        return features_tensor, labels_tensor
    return (
        features_tensor.pin_memory().to(device, non_blocking=True),
        labels_tensor.pin_memory().to(device, non_blocking=True),
    )


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a no-op elsewhere (CPU runs stay exact and deterministic)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_model(
    hyperparameters: Hyperparameters,
    features: torch.Tensor,
    labels: torch.Tensor,
    on_epoch_end: Callable[[int, float], None] | None = None,
    compile_model: bool = False,
) -> TrainedModel:
    """Fit a new model on tensors already on the training device.

    ``compile_model`` trains through ``torch.compile`` (trainer.compilation); the model returned
    is the plain module either way, so it pickles and loads without a compiler.
    ``on_epoch_end(epoch, mean_loss)`` is called after each epoch (epochs count from 1).
    Raises TrainingDivergedError as soon as an epoch's loss is NaN or infinite.
    """
    device = features.device
    hp = hyperparameters
    model = build_model(features.shape[1], hp.hidden_width, hp.depth).to(device)
    optimizer = build_optimizer(hp.optimizer, list(model.parameters()), hp.learning_rate)
    forward = compiled(model, device) if compile_model else model
    return fit(model, optimizer, hp, features, labels, forward=forward, on_epoch_end=on_epoch_end)


def compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` through ``torch.compile`` (imported here: only ``--compile`` pays for it)."""
    from trainer.compilation import compile_model

    return compile_model(model, device)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    hyperparameters: Hyperparameters,
    features: torch.Tensor,
    labels: torch.Tensor,
    forward: nn.Module | None = None,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> TrainedModel:
    """Train ``model`` in place for ``hyperparameters.epochs`` (its batch size and seed too).

    ``forward`` is what the batches go through (``model`` compiled, or ``model`` itself); the
    benchmark calls this twice on one model so that the timed run excludes compilation.
    """
    device = features.device
    hp = hyperparameters
    forward = forward or model
    shuffling = torch.Generator().manual_seed(hp.seed)
    rows = features.shape[0]
    losses: list[float] = []
    started = time.perf_counter()
    for epoch in range(1, hp.epochs + 1):
        order = torch.randperm(rows, generator=shuffling).to(device, non_blocking=True)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, rows, hp.batch_size):
            batch = order[start : start + hp.batch_size]
            with autocast(device):
                loss = nn.functional.cross_entropy(forward(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * batch.numel()
        mean_loss = (loss_sum / rows).item()
        if not math.isfinite(mean_loss):
            raise TrainingDivergedError(
                f"training diverged at epoch {epoch}: loss={mean_loss} "
                f"(learning_rate={hp.learning_rate}, optimizer={hp.optimizer}); "
                "try a smaller learning rate"
            )
        losses.append(mean_loss)
        if on_epoch_end:
            on_epoch_end(epoch, mean_loss)
    seconds = time.perf_counter() - started
    return TrainedModel(model, losses, seconds, rows * hp.epochs / seconds)


@torch.no_grad()
def evaluate(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    """Accuracy, F1 (class 1) and mean cross-entropy of ``model`` on a test set."""
    model.eval()
    batches = []
    for start in range(0, features.shape[0], _EVALUATION_BATCH):
        with autocast(features.device):
            batches.append(model(features[start : start + _EVALUATION_BATCH]).float())
    return figures(torch.cat(batches), labels)


@torch.no_grad()
def figures(logits: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    """Accuracy, F1 (class 1) and mean cross-entropy of ``logits`` (rows x classes) against
    ``labels``: what ``evaluate`` reports for a model, and the evaluation for a served one."""
    loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum")
    predicted = logits.argmax(dim=1)
    true_positive = ((predicted == 1) & (labels == 1)).sum()
    # One transfer for all the figures instead of one sync per figure.
    correct, tp, predicted_positive, actual_positive, total_loss = torch.stack(
        [
            (predicted == labels).sum().float(),
            true_positive.float(),
            (predicted == 1).sum().float(),
            (labels == 1).sum().float(),
            loss_sum,
        ]
    ).tolist()
    rows = labels.shape[0]
    f1_denominator = predicted_positive + actual_positive
    return Evaluation(
        accuracy=correct / rows,
        f1=2 * tp / f1_denominator if f1_denominator else 0.0,
        loss=total_loss / rows,
    )
