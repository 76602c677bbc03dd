"""The failures the trainer reports with their own exit codes, so Airflow can tell them apart.

Exit codes: 0 ok, 1 unexpected error, 2 usage, 3 data contract violated, 4 training diverged,
5 CUDA required but missing, 6 stale evaluation (the champion moved after the candidate was
compared with it, so deploy refused to promote), 7 unservable model (it does not load with
mlflow.pyfunc, does not take raw feature rows, or its output is not finite logits). A flag
this machine cannot honour (``--compile`` without a compiler) is a usage error, 2, like
argparse's own.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_DATA_CONTRACT = 3
EXIT_DIVERGED = 4
EXIT_CUDA_MISSING = 5
EXIT_STALE_EVALUATION = 6
EXIT_UNSERVABLE = 7


class TrainerError(Exception):
    """A failure the trainer explains in one message; ``exit_code`` is the process's status."""

    exit_code = EXIT_UNEXPECTED


class InputNotFoundError(TrainerError):
    """An input URI points at nothing."""


class UnreadableFileError(TrainerError):
    """An input exists but is not the format it should be (e.g. not parquet)."""


class RegistryLookupError(TrainerError):
    """A registered model or one of its versions does not exist."""


class DataContractError(TrainerError):
    """The input data breaks the data contract (trainer.contract)."""

    exit_code = EXIT_DATA_CONTRACT


class TrainingDivergedError(TrainerError):
    """The training loss became NaN or infinite."""

    exit_code = EXIT_DIVERGED


class CudaUnavailableError(TrainerError):
    """CUDA was required (``--require-cuda`` or ``--device cuda``) but this process has none."""

    exit_code = EXIT_CUDA_MISSING


class StaleEvaluationError(TrainerError):
    """The champion is not the one the evaluation compared the candidate with; nothing moved."""

    exit_code = EXIT_STALE_EVALUATION


class CompileUnavailableError(TrainerError):
    """``--compile`` was asked for but the compiler torch.compile needs is missing."""

    exit_code = EXIT_USAGE


class UnservableModelError(TrainerError):
    """A model that cannot serve: it does not load, take raw rows or return finite logits."""

    exit_code = EXIT_UNSERVABLE


class UsageError(TrainerError):
    """Arguments that parse but contradict each other."""

    exit_code = EXIT_USAGE
