"""``python -m trainer COMMAND``: the entry point of every pipeline pod.

Each command writes its result as JSON to the xcom file Airflow reads (``--xcom-path``, env
``TRAINER_XCOM_PATH``, default /airflow/xcom/return.json) and exits with a code that says what
went wrong (trainer.errors); a command that fails with its own exit code writes
``{"error": MESSAGE, "exit_code": N}`` there instead, which Airflow pushes for a failed pod too.
Command modules are imported only when their command runs, so the
light commands do not pay for torch and MLflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainer.errors import EXIT_OK, EXIT_UNEXPECTED, TrainerError, UsageError
from trainer.trial import DEVICES, OPTIMIZERS, Hyperparameters

DEFAULT_XCOM_PATH = "/airflow/xcom/return.json"
TERMINATION_LOG = "/dev/termination-log"
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4000
log = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _tag(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _champion_version(text: str) -> str | None:
    # Jinja renders a missing champion_version xcom as "None", so the match ignores case.
    if text.lower() == "none":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a version number or 'none', got {text!r}")
    return str(int(text))


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {text!r}")
    return value


def _validate(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.commands import validate
    from trainer.contract import ContractLimits

    limits = ContractLimits(args.min_rows, args.max_null_rate, args.min_label_fraction)
    return validate.run(args.input, limits, args.report_uri)


def _preprocess(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.commands import preprocess

    return preprocess.run(args.input, args.output_prefix, args.test_fraction, args.seed)


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.commands import train

    hyperparameters = Hyperparameters(
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        epochs=args.epochs,
        hidden_width=args.hidden_width,
        depth=args.depth,
        seed=args.seed,
    )
    return train.run(
        train_uri=args.train_uri,
        test_uri=args.test_uri,
        scaler_uri=args.scaler_uri,
        hyperparameters=hyperparameters,
        trial_id=args.trial_id,
        experiment=args.experiment,
        device_name=args.device,
        require_cuda=args.require_cuda,
        tags=dict(args.tag),
        cache_dir=args.cache_dir,
        compile_model=args.compile,
        deterministic=args.deterministic,
        impute_missing=args.impute_missing,
    )


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.commands import evaluate

    datasets = list(args.dataset) + (
        [("reference", args.reference_uri)] if args.reference_uri else []
    )
    names = [name for name, _ in datasets]
    if len(set(names)) != len(names):
        raise UsageError(f"evaluate: --dataset names repeat ({', '.join(names)}); name each once")
    return evaluate.run(
        candidate_uri=args.candidate_uri,
        model_name=args.model_name,
        datasets=dict(datasets),
        experiment=args.experiment,
        device_name=args.device,
        tags=dict(args.tag),
    )


def _deploy(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.commands import deploy

    return deploy.run(
        args.model_name,
        str(args.version),
        args.record_prefix,
        args.dag_run_id,
        expected_champion=args.expected_champion,
        evaluation=args.evaluation,
        canary_uri=args.canary_uri,
    )


def _add_validate(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "validate", parents=[common], help="check the input against the data contract"
    )
    parser.add_argument("--input", required=True, help="features parquet (s3:// or local)")
    parser.add_argument("--min-rows", type=int, default=500)
    parser.add_argument("--max-null-rate", type=_fraction, default=0.05)
    parser.add_argument("--min-label-fraction", type=_fraction, default=0.2)
    parser.add_argument(
        "--report-uri", help="also write the verdict here (JSON), valid or not (s3:// or local)"
    )
    parser.set_defaults(handler=_validate)


def _add_preprocess(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "preprocess", parents=[common], help="split, impute and standardise the features"
    )
    parser.add_argument("--input", required=True, help="features parquet (s3:// or local)")
    parser.add_argument("--output-prefix", required=True, help="where train/test/scaler go")
    parser.add_argument("--test-fraction", type=_fraction, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.set_defaults(handler=_preprocess)


def _add_train(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("train", parents=[common], help="run one hyperparameter trial")
    parser.add_argument("--train-uri", required=True)
    parser.add_argument("--test-uri", required=True)
    parser.add_argument(
        "--scaler-uri", required=True, help="preprocess's scaler.json, packaged with the model"
    )
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--batch-size", type=_positive_int, required=True)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, required=True)
    parser.add_argument("--epochs", type=_positive_int, required=True)
    parser.add_argument("--hidden-width", type=_positive_int, required=True)
    parser.add_argument("--depth", type=_positive_int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--trial-id", required=True)
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument(
        "--require-cuda", action="store_true", help="exit 5 instead of training on the CPU"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="train through torch.compile (needs a C/C++ compiler; pays only for large models)",
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels on CUDA too (the CPU always uses them); slower on CUDA",
    )
    parser.add_argument(
        "--no-impute-missing",
        dest="impute_missing",
        action="store_false",
        help="package a model that expects complete rows (deploy's canary refuses it)",
    )
    parser.add_argument(
        "--tag", type=_tag, action="append", default=[], metavar="KEY=VALUE", help="run tag"
    )
    parser.add_argument("--cache-dir", help="shared volume where downloaded parquet is cached")
    parser.set_defaults(handler=_train)


def _dataset(text: str) -> tuple[str, str]:
    name, separator, uri = text.partition("=")
    if not separator or not name.isidentifier() or not uri:
        raise argparse.ArgumentTypeError(f"expected NAME=URI (NAME a word), got {text!r}")
    return name, uri


def _add_evaluate(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "evaluate",
        parents=[common],
        help="score the candidate and the champion on the same raw rows",
    )
    parser.add_argument("--candidate-uri", required=True, help="e.g. runs:/RUN_ID/model")
    parser.add_argument(
        "--model-name", required=True, help="the registered model whose champion is compared"
    )
    parser.add_argument(
        "--dataset",
        type=_dataset,
        action="append",
        required=True,
        metavar="NAME=URI",
        help="an evaluation set (raw rows with labels); repeat for several",
    )
    parser.add_argument(
        "--reference-uri",
        default="",
        help="a fixed evaluation set, scored as the dataset 'reference' (empty: none)",
    )
    parser.add_argument("--experiment", required=True, help="MLflow experiment of the run")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument(
        "--tag", type=_tag, action="append", default=[], metavar="KEY=VALUE", help="run tag"
    )
    parser.set_defaults(handler=_evaluate)


def _add_deploy(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "deploy", parents=[common], help="make a registered model version the champion"
    )
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--version", type=_positive_int, required=True)
    parser.add_argument("--record-prefix", required=True, help="where deployment records go")
    parser.add_argument("--dag-run-id", default="manual", help="recorded as promoted_by")
    parser.add_argument(
        "--expected-champion",
        type=_champion_version,
        required=True,
        metavar="VERSION|none",
        help="the champion the evaluation compared with; deploy exits 6 if it has changed",
    )
    parser.add_argument(
        "--evaluation",
        type=_json_object,
        default="{}",
        metavar="JSON",
        help="the evaluation's figures (a JSON object), kept in the champion history",
    )
    parser.add_argument(
        "--canary-uri",
        help="raw rows (today's holdout.parquet) the version must serve before the alias moves",
    )
    parser.set_defaults(handler=_deploy)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m trainer`` argument parser with its five commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--xcom-path",
        default=os.environ.get("TRAINER_XCOM_PATH", DEFAULT_XCOM_PATH),
        help="where the result JSON goes (env TRAINER_XCOM_PATH; default %(default)s)",
    )
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    adders: Sequence[Callable[[argparse._SubParsersAction, argparse.ArgumentParser], None]] = (
        _add_validate,
        _add_preprocess,
        _add_train,
        _add_evaluate,
        _add_deploy,
    )
    for add in adders:
        add(commands, common)
    return parser


def write_xcom(result: dict[str, Any], path: str) -> None:
    """Write the command's result where Airflow's xcom sidecar reads it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2, sort_keys=True))


def _termination_message(message: str) -> None:
    """Leave ``message`` where Kubernetes reads a container's termination message.

    Only inside a pod (the kubelet mounts the file): the streamed log can miss a quick
    container's last lines, and the kubelet cannot always read them back from the log.
    """
    path = Path(TERMINATION_LOG)
    if path.is_file():
        try:
            path.write_text(message[:TERMINATION_MESSAGE_LIMIT])
        except OSError:
            log.warning("could not write the termination message to %s", path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code (argparse exits 2 itself on bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.require_cuda and args.device == "cpu":
        parser.error("train: --require-cuda contradicts --device cpu")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        result = args.handler(args)
        write_xcom(result, args.xcom_path)
    except TrainerError as error:
        print(f"trainer {args.command} failed: {error}", file=sys.stderr)
        _termination_message(f"trainer {args.command} failed: {error}")
        # Airflow pushes the xcom of a failed pod too: the notification can say why.
        try:
            write_xcom({"error": str(error), "exit_code": error.exit_code}, args.xcom_path)
        except OSError:
            log.warning("could not write the failure to %s", args.xcom_path, exc_info=True)
        return error.exit_code
    except Exception as error:
        log.exception("trainer %s failed unexpectedly", args.command)
        _termination_message(f"trainer {args.command} failed unexpectedly: {error!r}")
        return EXIT_UNEXPECTED
    log.info("result written to %s", args.xcom_path)
    return EXIT_OK
