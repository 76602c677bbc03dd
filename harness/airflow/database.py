"""The stack's Airflow metadata database: PostgreSQL by default, SQLite where chosen.

    ML_TESTBED_AIRFLOW_DB=postgresql   (the default) Debian's PostgreSQL server, a host process
                                       of the stack: data in <state>/airflow-db, listening on
                                       127.0.0.1 only, a password of its own, gone with ``down``
    ML_TESTBED_AIRFLOW_DB=sqlite       a file in the stack's Airflow home

Production Airflow runs on PostgreSQL: concurrent runs of one DAG meet its row locks and unique
constraints there, not SQLite's one-writer-at-a-time. PostgreSQL refuses to run as root, so where
the harness is root the server runs in a user namespace that maps root to an unprivileged uid
(its files stay root's, under the stack's private state folder).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import host, processes
from harness.airflow.environment import free_port, kept
from harness.paths import private_dir
from harness.steps import run, step

DB_ENV = "ML_TESTBED_AIRFLOW_DB"
POSTGRESQL = "postgresql"
SQLITE = "sqlite"
ALIASES = {"postgresql": POSTGRESQL, "postgres": POSTGRESQL, "sqlite": SQLITE}
PROCESS = "airflow-postgresql"
USER = DATABASE = "airflow"
# The uid the server sees itself as when the harness is root (any uid but 0 will do).
NAMESPACE_UID = 1000
# Four Airflow components with SQLAlchemy pools of 5 + 10 overflow each, and the CLI calls.
MAX_CONNECTIONS = 200
# A throwaway database: durability against a power loss buys nothing here; row locks, unique
# constraints and isolation, what the scenarios meet, are unchanged.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "max_connections": str(MAX_CONNECTIONS),
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}

# SQLite lets one writer in at a time, and four Airflow components plus every task process
# write. Under a full scenario suite the default 5 s busy timeout let an api-server INSERT give
# up ("Database error", HTTP 500 on triggering a run); 30 s waits for the writer ahead instead.
SQLITE_CONNECT_ARGS = {"timeout": 30}
# Imported by Airflow's processes (this project is installed in their environment).
SQLITE_CONNECT_ARGS_PATH = "harness.airflow.database.SQLITE_CONNECT_ARGS"


class DatabaseSettingError(ValueError):
    """``ML_TESTBED_AIRFLOW_DB`` names no database the harness can run."""


def backend(environ: dict[str, str] | os._Environ = os.environ) -> str:
    """The chosen backend, ``postgresql`` or ``sqlite``; a clear error for anything else."""
    value = environ.get(DB_ENV, "").strip().lower() or POSTGRESQL
    if value not in ALIASES:
        raise DatabaseSettingError(
            f"${DB_ENV}={environ.get(DB_ENV)!r} is not a database for Airflow's metadata: set "
            f"it to {POSTGRESQL} (the default, as in production) or {SQLITE}"
        )
    return ALIASES[value]


@dataclass(frozen=True)
class MetadataDatabase:
    """Where Airflow's metadata lives, as the environment of every Airflow process says it."""

    backend: str
    url: str

    def environment(self) -> dict[str, str]:
        """The AIRFLOW__DATABASE__* variables (SQLite's busy timeout only for SQLite)."""
        env = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.url}
        if self.backend == SQLITE:
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = SQLITE_CONNECT_ARGS_PATH
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC"] = SQLITE_CONNECT_ARGS_PATH
        return env


def data_dir(state: Path) -> Path:
    """The PostgreSQL data folder of a stack."""
    return state / "airflow-db"


def start(
    state: Path,
    home: Path,
    chosen: str | None = None,
    *,
    airflow_running: bool = False,
    avoid_ports: frozenset[int] = frozenset(),
) -> MetadataDatabase:
    """The stack's metadata database, its server started when it is PostgreSQL and not running.

    The choice is kept in the Airflow home: while Airflow runs, another choice is refused
    (switching would restart it on an empty database under other users' runs).
    """
    chosen = chosen or backend()
    private_dir(home)
    recorded = home / "db-backend"
    running_on = recorded.read_text() if recorded.exists() else chosen
    if airflow_running and running_on != chosen:
        raise DatabaseSettingError(
            f"the stack's Airflow runs on {running_on}, but {DB_ENV} chooses {chosen}: "
            f"set {DB_ENV}={running_on}, or take the stack down first (python -m harness down)"
        )
    recorded.write_text(chosen)
    if chosen == SQLITE:
        stop(state)
        return MetadataDatabase(SQLITE, f"sqlite:///{home / 'airflow.db'}")
    password = kept(home / ".postgresql_password", lambda: secrets.token_urlsafe(24))
    port = int(kept(home / "db-port", lambda: str(_free_port_but(avoid_ports))))
    url = f"postgresql+psycopg2://{USER}:{password}@127.0.0.1:{port}/{DATABASE}"
    with step("Airflow metadata database (PostgreSQL)"):
        if processes.running_pid(state, PROCESS) is None:
            bindir = server_bindir()
            data = data_dir(state)
            if not (data / "PG_VERSION").exists():
                _initdb(bindir, data, home / ".postgresql_password")
            settings = [f"--{key}={value}" for key, value in {**SETTINGS, "port": port}.items()]
            processes.start(
                PROCESS,
                [*_unprivileged(), str(bindir / "postgres"), "-D", str(data), *settings],
                state=state,
            )
        # Also for a running server: an earlier up may have been killed before the database.
        processes.wait_until(
            lambda: _accepts(password, port), state=state, name=PROCESS, timeout=60
        )
        _create_database(password, port)
    return MetadataDatabase(POSTGRESQL, url)


def _free_port_but(taken: frozenset[int]) -> int:
    while (port := free_port()) in taken:
        pass
    return port


def stop(state: Path) -> None:
    """Stops the stack's PostgreSQL server (fast shutdown: its clients are gone by now)."""
    processes.stop(state, PROCESS, timeout=20, first=signal.SIGINT)


def server_bindir() -> Path:
    """The folder of PostgreSQL's ``postgres`` and ``initdb`` (Debian's newest), installed with
    apt where none is and the harness may."""
    found = _installed_bindir()
    if found is None:
        host.apt_install(
            ["postgresql"],
            why="Airflow's metadata database",
            otherwise=f"or set {DB_ENV}={SQLITE}",
        )
        found = _installed_bindir()
        _stop_package_clusters()
    if found is None:
        raise RuntimeError(
            "PostgreSQL's server (postgres, initdb) was not found in /usr/lib/postgresql/*/bin "
            f"or on PATH: install it (Debian: apt-get install postgresql) or set {DB_ENV}={SQLITE}"
        )
    return found


def _stop_package_clusters() -> None:
    """Debian's package makes a ``main`` cluster and may start it: the harness installed it, so
    the server it started (not the stack's) is stopped, and its data left as the package made."""
    if shutil.which("pg_lsclusters") is None:
        return
    listed = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3] == "online":
            subprocess.run(["pg_ctlcluster", fields[0], fields[1], "stop"], capture_output=True)


def _installed_bindir() -> Path | None:
    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = [Path(found).resolve().parent for found in [shutil.which("postgres")] if found]
    for bindir in [*debian, *on_path]:
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    return None


def _unprivileged() -> list[str]:
    """The prefix that runs a PostgreSQL program as a uid other than root (it refuses root)."""
    if os.geteuid() != 0:
        return []
    mapped = str(NAMESPACE_UID)
    return ["unshare", "--user", f"--map-user={mapped}", f"--map-group={mapped}"]


def _initdb(bindir: Path, data: Path, password_file: Path) -> None:
    private_dir(data.parent)
    run(
        [
            *_unprivileged(), str(bindir / "initdb"), "--pgdata", str(data),
            "--username", USER, "--pwfile", str(password_file), "--auth", "scram-sha-256",
            "--encoding", "UTF8", "--locale", "C.UTF-8",
        ],
        log=processes.log_path(data.parent, "airflow-initdb"),
    )  # fmt: skip


def _connect(password: str, port: int, database: str):
    import psycopg2

    return psycopg2.connect(
        host="127.0.0.1", port=port, user=USER, password=password, dbname=database,
        connect_timeout=3,
    )  # fmt: skip


def _accepts(password: str, port: int) -> bool:
    import psycopg2

    try:
        _connect(password, port, "postgres").close()
    except psycopg2.OperationalError as error:
        if "password authentication failed" in str(error):
            raise RuntimeError(
                f"the stack's PostgreSQL on 127.0.0.1:{port} refuses the stack's password: its "
                "data and the Airflow home disagree; take the stack down (python -m harness "
                "down) and bring it up again"
            ) from None
        return False
    return True


def _create_database(password: str, port: int) -> None:
    connection = _connect(password, port, "postgres")
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        connection.close()


def describe(database: MetadataDatabase) -> str:
    """The database in words, without its password."""
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", database.url)
