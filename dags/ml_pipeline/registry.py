"""The pipeline's reads and writes of the MLflow model registry from Airflow tasks.

Promotion itself (moving the ``champion`` alias) happens in the trainer's ``deploy`` pod; here the
candidate is registered, the champion looked up, and a rejection recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
_READY_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class Champion:
    """A version the ``champion`` alias points (or pointed) at."""

    version: str
    run_id: str
    # The trial it came from (its version tag), when the pipeline registered it.
    trial_id: str | None = None


def client_for(tracking_uri: str) -> MlflowClient:
    """An MLflow client for ``tracking_uri`` (imported late: parsing the DAG needs no MLflow)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def champion_version(client: MlflowClient, model_name: str) -> str | None:
    """The version the ``champion`` alias points at; None without the model or the alias."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(model_name).aliases or {}
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    # A model without the alias answers INVALID_PARAMETER_VALUE to get_model_version_by_alias.
    version = aliases.get(CHAMPION_ALIAS)
    return None if version is None else str(version)


def current_champion(client: MlflowClient, model_name: str) -> Champion | None:
    """The champion of ``model_name``, or None when the model or the alias does not exist yet."""
    champion = champion_version(client, model_name)
    if champion is None:
        return None
    found = client.get_model_version(model_name, champion)
    return Champion(
        version=str(found.version),
        run_id=found.run_id,
        trial_id=(found.tags or {}).get("trial_id"),
    )


def versions_registered_by(client: MlflowClient, model_name: str, dag_run_id: str) -> list[str]:
    """The versions of ``model_name`` that DAG run ``dag_run_id`` registered (any try of it)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return [str(v.version) for v in versions if (v.tags or {}).get("dag_run_id") == dag_run_id]


def register_candidate(
    client: MlflowClient, model_name: str, trial: dict[str, Any], tags: dict[str, str]
) -> str:
    """Register the trial's model as a version of ``model_name`` and point ``challenger`` at it.

    Idempotent for task retries: a version already registered from the same MLflow run is reused.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run_id = trial["run_id"]
    existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    if existing:
        version = str(existing[0].version)
    else:
        created = client.create_model_version(
            model_name,
            source=trial["model_uri"],
            run_id=run_id,
            tags=tags,
            model_id=logged_model_id(trial["model_uri"]),
        )
        version = str(created.version)
    _wait_until_ready(client, model_name, version)
    client.set_registered_model_alias(model_name, CHALLENGER_ALIAS, version)
    return version


def logged_model_id(model_uri: str) -> str | None:
    """The id of an MLflow 3 logged model (``models:/m-...``), which registration must name."""
    name = model_uri.removeprefix("models:/")
    return name if model_uri.startswith("models:/") and name.startswith("m-") else None


def _wait_until_ready(client: MlflowClient, model_name: str, version: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
    while True:
        status = client.get_model_version(model_name, version).status
        if status == "READY":
            return
        if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RuntimeError(
                f"version {version} of registered model {model_name!r} is {status}, not READY"
            )
        time.sleep(1)


def record_rejection(
    client: MlflowClient, model_name: str, version: str, reason: str, dag_run_id: str
) -> None:
    """Tag the candidate version with why it was not promoted.

    A version that once was the champion (re-evaluated after it was replaced) keeps its
    ``deployment_status`` (``retired``): its history is not rewritten.
    """
    tags = client.get_model_version(model_name, version).tags or {}
    status = {} if "promoted_at" in tags else {"deployment_status": "rejected"}
    for key, value in {
        **status,
        "rejection_reason": reason,
        "evaluated_by": dag_run_id,
    }.items():
        client.set_model_version_tag(model_name, version, key, value)
