"""A small client for Airflow's REST API (v2): what the scenario runner and the tests use."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

import requests

from harness.waiting import wait_until

FINISHED_RUN_STATES = frozenset({"success", "failed"})
TRIGGER_TRIES = 3


class AirflowApiError(RuntimeError):
    """Airflow answered a request with an error (``status``: its HTTP status, if it answered)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        """Whether asking again may succeed: no answer in time, or a server error (5xx)."""
        return self.status is None or self.status >= 500


def _unreachable(where: str, api_url: str, error: requests.RequestException) -> AirflowApiError:
    """Why ``api_url`` could not be asked: its TLS certificate is not trusted, or no answer."""
    if isinstance(error, requests.exceptions.SSLError):
        return AirflowApiError(
            f"{where}the TLS certificate of {api_url} is not trusted ({error}); name the CA "
            "bundle it is signed by (--ca-cert)"
        )
    return AirflowApiError(f"{where}cannot reach {api_url}: {error}")


def _task_path(dag_id: str, run_id: str, task_id: str) -> str:
    """The API path of one task of one run (a map index or more follows it)."""
    return f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}/taskInstances/{quote(task_id)}"


class AirflowClient:
    """Token-authenticated calls to one Airflow api-server.

    It logs in with ``user`` and ``password`` (Airflow 3's ``/auth/token``), or uses ``token``
    as it is (a token an operator got from their Airflow; it is not renewed). ``verify`` is
    requests' own: True, or the path of the CA bundle a production Airflow's TLS is signed by.
    """

    def __init__(
        self,
        api_url: str,
        user: str = "",
        password: str = "",
        timeout: float = 30,
        token: str | None = None,
        verify: bool | str = True,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self._credentials = {"username": user, "password": password}
        self._timeout = timeout
        self._session = requests.Session()
        # Passed with every request: a session's own is overridden by $REQUESTS_CA_BUNDLE.
        self._verify = verify
        self._given_token = token
        self._token: str | None = token

    def _login(self) -> None:
        if self._given_token is not None:
            raise AirflowApiError(
                f"{self.api_url} refused the token given (expired or not valid there): get a "
                "new one, or log in with a user and password",
                401,
            )
        try:
            response = self._session.post(
                f"{self.api_url}/auth/token",
                json=self._credentials,
                timeout=self._timeout,
                verify=self._verify,
            )
        except requests.RequestException as error:
            raise _unreachable("", self.api_url, error) from error
        if not response.ok:
            raise AirflowApiError(
                f"login as {self._credentials['username']} failed: {response.text}",
                response.status_code,
            )
        self._token = response.json()["access_token"]

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Calls ``/api/v2{path}``; logs in (again) when the token is missing or expired."""
        for attempt in range(2):
            if self._token is None:
                self._login()
            try:
                response = self._session.request(
                    method,
                    f"{self.api_url}/api/v2{path}",
                    headers={"Authorization": f"Bearer {self._token}"},
                    timeout=self._timeout,
                    verify=self._verify,
                    **kwargs,
                )
            except requests.Timeout as error:
                raise AirflowApiError(
                    f"{method} {path}: no answer in {self._timeout:.0f} s"
                ) from error
            except requests.ConnectionError as error:  # SSLError is one
                raise _unreachable(f"{method} {path}: ", self.api_url, error) from error
            if response.status_code == 401 and attempt == 0:
                self._token = None
                continue
            if not response.ok:
                raise AirflowApiError(
                    f"{method} {path}: HTTP {response.status_code}: {response.text}",
                    response.status_code,
                )
            return response.json() if response.content else None
        raise AirflowApiError(f"{method} {path}: still unauthorised after logging in again")

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        """The DAG once the dag-processor has parsed it; import errors fail at once."""

        def parsed() -> dict[str, Any] | None:
            try:
                return self.request("GET", f"/dags/{quote(dag_id)}")
            except AirflowApiError as error:
                errors = self.request("GET", "/importErrors").get("import_errors", [])
                if errors:
                    details = "; ".join(f"{e['filename']}: {e['stack_trace']}" for e in errors)
                    raise AirflowApiError(f"DAG files failed to import: {details}") from error
                return None

        return wait_until(
            parsed,
            timeout=timeout,
            interval=1,
            timed_out=f"DAG {dag_id} not parsed after {timeout:.0f} s",
            error=AirflowApiError,
        )

    def trigger(
        self,
        dag_id: str,
        logical_date: datetime,
        conf: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """Creates a DAG run for ``logical_date`` (required by Airflow 3's API) with ``conf``."""
        body: dict[str, Any] = {"logical_date": logical_date.isoformat(), "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        for attempt in range(1, TRIGGER_TRIES + 1):
            try:
                return self.request("POST", f"/dags/{quote(dag_id)}/dagRuns", json=body)
            except AirflowApiError as error:
                # A timed-out or failed write may still have created the run: look first.
                if not run_id or not (error.transient or error.status == 409):
                    raise
                try:
                    return self.dag_run(dag_id, run_id)
                except AirflowApiError as missing:
                    if missing.status != 404 or attempt == TRIGGER_TRIES:
                        raise error from None
                time.sleep(2 * attempt)
        raise AssertionError("unreachable")

    def ensure_pool(self, name: str, slots: int, description: str) -> None:
        """Creates pool ``name`` with ``slots``, or sets its slots when it exists."""
        body = {"name": name, "slots": slots, "description": description, "include_deferred": False}
        try:
            self.request("POST", "/pools", json=body)
        except AirflowApiError as error:
            if error.status != 409:
                raise
            self.request("PATCH", f"/pools/{quote(name)}", json=body)

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """One DAG run."""
        return self.request("GET", f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}")

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float,
        on_progress: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None,
        interval: float = 2,
    ) -> dict[str, Any]:
        """Polls until the run succeeds or fails; ``on_progress`` sees the run and its tasks."""
        last: dict[str, Any] = {}

        def finished() -> dict[str, Any] | None:
            last.update(self.dag_run(dag_id, run_id))
            if on_progress:
                on_progress(dict(last), self.task_instances(dag_id, run_id))
            return dict(last) if last["state"] in FINISHED_RUN_STATES else None

        return wait_until(
            finished,
            timeout=timeout,
            interval=interval,
            timed_out=lambda: (
                f"DAG run {dag_id}/{run_id} still {last.get('state')} after {timeout:.0f} s"
            ),
            error=AirflowApiError,
        )

    def set_run_state(self, dag_id: str, run_id: str, state: str) -> dict[str, Any]:
        """Marks a run ``success`` or ``failed`` (its unfinished tasks stop being scheduled)."""
        path = f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}"
        return self.request("PATCH", path, json={"state": state})

    def clear_tasks(
        self,
        dag_id: str,
        run_id: str,
        task_ids: list[str],
        downstream: bool = False,
        only_failed: bool = False,
    ) -> list[dict[str, Any]]:
        """Clears tasks of one run as the UI's Clear does (the run is queued again); returns the
        task instances cleared. A mapped task's one index is ``task_id[i]``'s pair."""
        body = {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": task_ids,
            "include_downstream": downstream,
            "only_failed": only_failed,
            "reset_dag_runs": True,
        }
        answer = self.request("POST", f"/dags/{quote(dag_id)}/clearTaskInstances", json=body)
        return answer.get("task_instances", [])

    def clear_run(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Clears every task of the run (it runs again from the start); returns those cleared."""
        path = f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}/clear"
        answer = self.request("POST", path, json={"dry_run": False})
        return answer.get("task_instances", [])

    def set_task_state(
        self, dag_id: str, run_id: str, task_id: str, state: str, map_index: int = -1
    ) -> Any:
        """Marks one task instance ``success`` or ``failed``, as the UI's Mark does."""
        path = _task_path(dag_id, run_id, task_id)
        if map_index >= 0:
            path += f"/{map_index}"
        return self.request("PATCH", path, json={"new_state": state})

    def task_tries(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> list[dict[str, Any]]:
        """Every try of one task instance, oldest first (its earlier tries and the current)."""
        path = _task_path(dag_id, run_id, task_id)
        path += f"/{map_index}/tries" if map_index >= 0 else "/tries"
        tries = self.request("GET", path, params={"limit": 1000})["task_instances"]
        return sorted(tries, key=lambda t: t.get("try_number") or 0)

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        """The task's return value (deserialised); None when it returned nothing."""
        path = f"{_task_path(dag_id, run_id, task_id)}/xcomEntries/return_value"
        try:
            answer = self.request("GET", path, params={"map_index": map_index, "deserialize": True})
        except AirflowApiError as error:
            if error.status == 404:
                return None
            raise
        return answer.get("value")

    def tasks(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's tasks (``task_id``, ``downstream_task_ids``, ...), mapped ones once."""
        return self.request("GET", f"/dags/{quote(dag_id)}/tasks")["tasks"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run, mapped ones one per map index."""
        path = f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        return self.request("GET", path, params={"limit": 1000})["task_instances"]

    def task_log(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        try_number: int,
        map_index: int = -1,
        whole_errors: bool = False,
    ) -> str:
        """The task's log for one try, as text; a failure's exception by its first line, or
        whole (``whole_errors``: the pod operator's dump of the failed pod included)."""
        path = f"{_task_path(dag_id, run_id, task_id)}/logs/{try_number}"
        answer = self.request("GET", path, params={"map_index": map_index, "full_content": "true"})
        lines = []
        for item in answer.get("content", []):
            if isinstance(item, dict):
                lines.append(
                    " ".join(str(item.get(k, "")) for k in ("timestamp", "level", "event"))
                )
                # A failed task's exception is structured, beside the event ("Task failed").
                for error in item.get("error_detail") or []:
                    message = str(error.get("exc_value", ""))
                    message = message if whole_errors else message.split("\n", 1)[0]
                    lines.append(f"    {error.get('exc_type', '')}: {message}")
            else:
                lines.append(str(item))
        return "\n".join(lines)
