"""``deploy``: make a registered model version the ``champion`` and record the promotion.

Safe to retry: when the alias already points at the version (a retried pod), the previous
champion is read back from the version's own ``previous_champion`` tag.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from trainer import storage
from trainer.errors import RegistryLookupError

CHAMPION_ALIAS = "champion"
NO_CHAMPION = "none"
log = logging.getLogger(__name__)


def run(model_name: str, version: str, record_prefix: str, dag_run_id: str) -> dict[str, Any]:
    """Promote ``version`` of ``model_name``; returns the deployment record it wrote."""
    client = MlflowClient()
    registered = _registered_model(client, model_name)
    promoted = _model_version(client, model_name, version)
    previous = _previous_champion(registered, promoted)
    promoted_at = datetime.now(UTC).isoformat(timespec="seconds")
    version_tags = {
        "deployment_status": "champion",
        "promoted_at": promoted_at,
        "promoted_by": dag_run_id,
        "previous_champion": previous or NO_CHAMPION,
    }
    for key, value in version_tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
    if previous:
        client.set_model_version_tag(model_name, previous, "deployment_status", "retired")
        client.set_model_version_tag(model_name, previous, "replaced_by", version)
    record = {
        "model_name": model_name,
        "version": version,
        "previous_champion": previous,
        "promoted_at": promoted_at,
        "promoted_by": dag_run_id,
        "run_id": promoted.run_id,
        "metrics": client.get_run(promoted.run_id).data.metrics if promoted.run_id else {},
    }
    for file_name in (f"v{version}.json", "latest.json"):
        storage.write_json(record, storage.join_uri(record_prefix, model_name, file_name))
    log.info("%s v%s is the champion (previous: %s)", model_name, version, previous or "none")
    return record


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


def _previous_champion(registered: RegisteredModel, promoted: ModelVersion) -> str | None:
    """The version the alias pointed at before this promotion (None if there was none)."""
    current = registered.aliases.get(CHAMPION_ALIAS)
    if current is None:
        return None
    if str(current) != str(promoted.version):
        return str(current)
    recorded = promoted.tags.get("previous_champion", NO_CHAMPION)
    return None if recorded == NO_CHAMPION else recorded
