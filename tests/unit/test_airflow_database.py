"""The choice of Airflow's metadata database and what Airflow is told of it."""

from __future__ import annotations

import pytest

from harness.airflow import database


@pytest.mark.parametrize(
    ("value", "chosen"),
    [(None, "postgresql"), ("", "postgresql"), ("postgres", "postgresql"), (" SQLite ", "sqlite")],
)
def test_postgresql_is_the_default_and_sqlite_is_selectable(value, chosen):
    environ = {} if value is None else {database.DB_ENV: value}
    assert database.backend(environ) == chosen


def test_an_unknown_database_is_refused_naming_the_setting_and_the_choices():
    with pytest.raises(database.DatabaseSettingError) as refused:
        database.backend({database.DB_ENV: "mysql"})
    message = str(refused.value)
    assert database.DB_ENV in message and "'mysql'" in message
    assert "postgresql" in message and "sqlite" in message


def test_the_busy_timeout_goes_with_sqlite_only():
    sqlite = database.MetadataDatabase("sqlite", "sqlite:////x/airflow.db").environment()
    assert sqlite["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] == (
        database.SQLITE_CONNECT_ARGS_PATH
    )
    url = "postgresql+psycopg2://airflow:pw@127.0.0.1:5/airflow"
    postgresql = database.MetadataDatabase("postgresql", url).environment()
    assert postgresql["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == url
    assert not any("CONNECT_ARGS" in key for key in postgresql)


def test_the_connect_args_path_is_importable_as_airflow_imports_it():
    from airflow._shared.module_loading import import_string

    assert import_string(database.SQLITE_CONNECT_ARGS_PATH) == {"timeout": 30}


def test_the_description_hides_the_password():
    url = "postgresql+psycopg2://airflow:s3cr3t-pw@127.0.0.1:5432/airflow"
    described = database.describe(database.MetadataDatabase("postgresql", url))
    assert "s3cr3t" not in described and "airflow:***@127.0.0.1:5432" in described


def test_the_server_runs_as_another_uid_when_the_harness_is_root(monkeypatch):
    monkeypatch.setattr(database.os, "geteuid", lambda: 0)
    prefix = database._unprivileged()
    assert prefix[:2] == ["unshare", "--user"] and "--map-user=0" not in prefix
    monkeypatch.setattr(database.os, "geteuid", lambda: 1234)
    assert database._unprivileged() == []


def test_airflow_reaches_postgresql_through_its_async_driver_too():
    from airflow.settings import _get_async_conn_uri_from_sync

    url = "postgresql+psycopg2://airflow:pw@127.0.0.1:5/airflow"
    assert _get_async_conn_uri_from_sync(url).startswith("postgresql+asyncpg://")
    import asyncpg  # noqa: F401  (installed: Airflow's async sessions need it)
    import psycopg2  # noqa: F401


def test_another_choice_is_refused_while_the_stacks_airflow_runs(tmp_path):
    state, home = tmp_path / "state", tmp_path / "home"
    assert database.start(state, home, "sqlite").backend == "sqlite"
    with pytest.raises(database.DatabaseSettingError) as refused:
        database.start(state, home, "postgresql", airflow_running=True)
    message = str(refused.value)
    assert "runs on sqlite" in message and "harness down" in message
    # Nothing was changed by the refusal; a stopped Airflow may switch.
    assert (home / "db-backend").read_text() == "sqlite"
    assert not (home / ".postgresql_password").exists()


def test_a_refused_password_is_said_at_once_not_waited_out(monkeypatch):
    import psycopg2

    def refuse(*_args):
        raise psycopg2.OperationalError('FATAL:  password authentication failed for user "a"')

    monkeypatch.setattr(database, "_connect", refuse)
    with pytest.raises(RuntimeError, match=r"refuses the stack's password.*harness down"):
        database._accepts("pw", 5)


def test_the_database_port_is_never_the_api_servers(monkeypatch):
    ports = iter([4000, 4000, 4001])
    monkeypatch.setattr(database, "free_port", lambda: next(ports))
    assert database._free_port_but(frozenset({4000})) == 4001
