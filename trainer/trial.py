"""What a trial is: its hyperparameters and the choices its flags allow (no torch import here,
so the command line can be parsed before the heavy modules load)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

OPTIMIZERS = ("adam", "adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Hyperparameters:
    """What a trial varies; the names are the ``train`` flags and the MLflow params."""

    learning_rate: float
    batch_size: int
    optimizer: str
    epochs: int
    hidden_width: int
    depth: int
    seed: int

    def as_dict(self) -> dict[str, float | int | str]:
        """The hyperparameters by name, as they appear in the xcom and in MLflow."""
        return asdict(self)
