"""``deploy``: make a registered model version the ``champion`` and record the promotion.

A compare-and-set: the alias moves only while the champion is still the one the run's evaluation
compared the candidate with (``expected_champion``); otherwise StaleEvaluationError, and nothing
moves. Each move is appended to the model's champion history (trainer.history).

Safe to retry: when the alias already points at the version (a retried pod), the previous
champion is read back from the version's own ``previous_champion`` tag, and the move is not
appended to the history a second time.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from trainer import history, serving, storage
from trainer.errors import RegistryLookupError, StaleEvaluationError

CHAMPION_ALIAS = "champion"
NO_CHAMPION = "none"
log = logging.getLogger(__name__)


def run(
    model_name: str,
    version: str,
    record_prefix: str,
    dag_run_id: str,
    expected_champion: str | None,
    evaluation: dict[str, Any],
    canary_uri: str | None = None,
) -> dict[str, Any]:
    """Promote ``version`` if the champion is still ``expected_champion`` and the version
    serves; returns the record.

    ``expected_champion`` is None when the evaluation found no champion. Raises
    StaleEvaluationError, having changed nothing, when the champion is another version. With
    ``canary_uri`` (raw rows, today's held-out split) the version is first loaded with
    mlflow.pyfunc and scores a canary batch (trainer.serving.canary); UnservableModelError,
    with nothing changed, when it cannot.
    """
    client = MlflowClient()
    registered = _registered_model(client, model_name)
    promoted = _model_version(client, model_name, version)
    alias = registered.aliases.get(CHAMPION_ALIAS)
    current = None if alias is None else str(alias)
    retried = current == version
    if not retried and current != expected_champion:
        raise _stale_evaluation(client, model_name, version, current, expected_champion, dag_run_id)
    canary = None
    if canary_uri and not retried:
        canary = serving.canary(f"models:/{model_name}/{version}", storage.read_parquet(canary_uri))
        log.info("canary: v%s served %d rows", version, canary["rows"])
    # Read first: a ledger that cannot be read fails the deploy before anything moved.
    moves = history.read_moves(record_prefix, model_name)
    previous = _previous_champion(current, promoted)
    promoted_at = datetime.now(UTC).isoformat(timespec="seconds")
    _move_alias(client, model_name, version, previous, promoted_at, dag_run_id)
    record = {
        "model_name": model_name,
        "version": version,
        "previous_champion": previous,
        "compared_with": expected_champion,
        "promoted_at": promoted_at,
        "promoted_by": dag_run_id,
        "run_id": promoted.run_id,
        "metrics": client.get_run(promoted.run_id).data.metrics if promoted.run_id else {},
        "history_uri": history.history_uri(record_prefix, model_name),
        "canary": canary,
    }
    for file_name in (f"v{version}.json", "latest.json"):
        storage.write_json(record, storage.join_uri(record_prefix, model_name, file_name))
    _record_move(record_prefix, record, evaluation, retried, moves)
    log.info("%s v%s is the champion (previous: %s)", model_name, version, previous or "none")
    return record


def _move_alias(
    client: MlflowClient,
    model_name: str,
    version: str,
    previous: str | None,
    promoted_at: str,
    dag_run_id: str,
) -> None:
    """Point the alias at ``version``, tag it champion and retire ``previous``.

    ``previous_champion`` is written before the alias moves (a retried pod reads it back); the
    status tags after, so a failed alias move leaves no version tagged champion that is not.
    """
    client.set_model_version_tag(model_name, version, "previous_champion", previous or NO_CHAMPION)
    client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
    version_tags = {
        "deployment_status": "champion",
        "promoted_at": promoted_at,
        "promoted_by": dag_run_id,
    }
    for key, value in version_tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    if previous:
        client.set_model_version_tag(model_name, previous, "deployment_status", "retired")
        client.set_model_version_tag(model_name, previous, "replaced_by", version)


def _record_move(
    record_prefix: str,
    record: dict[str, Any],
    evaluation: dict[str, Any],
    retried: bool,
    moves: list[dict[str, Any]],
) -> None:
    """Append the promotion to the champion history (``moves``, read before the alias moved),
    once even when the pod is retried."""
    model_name, version = record["model_name"], record["version"]
    # A retry after the history was written must not add the move again; a retry of a pod that
    # died between moving the alias and writing the history still adds it.
    if retried and moves and moves[-1]["to"] == version:
        log.info("the champion history already records the move to v%s", version)
        return
    move = {
        "model_name": model_name,
        "from": record["previous_champion"],
        "to": version,
        "at": record["promoted_at"],
        "dag_run_id": record["promoted_by"],
        "run_id": record["run_id"],
        "compared_with": record["compared_with"],
        "evaluation": evaluation,
    }
    history.append_move(record_prefix, model_name, move)


def _stale_evaluation(
    client: MlflowClient,
    model_name: str,
    version: str,
    current: str | None,
    expected: str | None,
    dag_run_id: str,
) -> StaleEvaluationError:
    """The refusal to promote ``version``, saying who moved the champion since the evaluation."""
    if current is None:
        now = f"{model_name} has no champion (its {CHAMPION_ALIAS!r} alias was removed)"
    else:
        tags = client.get_model_version(model_name, current).tags
        promoted_by, promoted_at = tags.get("promoted_by"), tags.get("promoted_at")
        who = (
            f"promoted by run {promoted_by} at {promoted_at}"
            if promoted_by and promoted_at
            else "its promoted_by/promoted_at tags are missing: moved outside the pipeline?"
        )
        now = f"the champion of {model_name} is v{current} ({who})"
    return StaleEvaluationError(
        f"{now} but the evaluation compared v{version} with {history.describe(expected)}; the "
        f"comparison is stale, so v{version} is not promoted and nothing changed; clear "
        f"score_models of run {dag_run_id} with its downstream tasks so that the candidate is "
        f"scored against {history.describe(current)}"
    )


def _registered_model(client: MlflowClient, model_name: str) -> RegisteredModel:
    try:
        return client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise RegistryLookupError(
            f"registered model {model_name!r} does not exist in the MLflow registry at "
            f"{client.tracking_uri}; check --model-name (evaluate_model registers the candidate "
            "before deploy runs)"
        ) from None


def _model_version(client: MlflowClient, model_name: str, version: str) -> ModelVersion:
    try:
        found = client.get_model_version(model_name, version)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise RegistryLookupError(
            f"registered model {model_name!r} has no version {version!r} in the MLflow registry "
            f"at {client.tracking_uri}; check --version"
        ) from None
    if found.status != "READY":
        raise RegistryLookupError(
            f"version {version} of registered model {model_name!r} is {found.status}, not READY; "
            "wait for its registration to finish or register it again"
        )
    return found


def _previous_champion(current: str | None, promoted: ModelVersion) -> str | None:
    """The version the alias pointed at before this promotion (None if there was none)."""
    if current != str(promoted.version):
        return current
    recorded = promoted.tags.get("previous_champion", NO_CHAMPION)
    return None if recorded == NO_CHAMPION else recorded
