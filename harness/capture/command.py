"""``python -m harness capture``: one run of a (production) Airflow into a scenario file.

Credentials come from the command line or the environment (``ML_TESTBED_AIRFLOW_USER`` and
``ML_TESTBED_AIRFLOW_PASSWORD``, or ``ML_TESTBED_AIRFLOW_TOKEN``); none is ever written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from harness.scenarios.model import NAME_PATTERN, SCENARIOS_DIR

USER_ENV = "ML_TESTBED_AIRFLOW_USER"
PASSWORD_ENV = "ML_TESTBED_AIRFLOW_PASSWORD"
TOKEN_ENV = "ML_TESTBED_AIRFLOW_TOKEN"
DEFAULT_DAG_ID = "ml_full_training_pipeline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The capture command's options."""
    parser.add_argument("--airflow", required=True, help="the api-server's URL (https://...)")
    parser.add_argument("--run-id", required=True, help="the DAG run to capture")
    parser.add_argument("--dag-id", default=DEFAULT_DAG_ID, help=f"default {DEFAULT_DAG_ID}")
    parser.add_argument("--user", help=f"Airflow user (default ${USER_ENV})")
    parser.add_argument(
        "--password", help=f"its password (default ${PASSWORD_ENV}; the environment is safer)"
    )
    parser.add_argument("--token", help=f"an Airflow API token instead (default ${TOKEN_ENV})")
    parser.add_argument("--ca-cert", type=Path, help="CA bundle the Airflow's TLS is signed by")
    parser.add_argument("--kubeconfig", type=Path, help="the cluster the run's pods ran on")
    parser.add_argument("--context", help="the kubeconfig's context (default: its current one)")
    parser.add_argument(
        "--namespace",
        action="append",
        help="namespace of the run's pods (repeatable; default the pipeline's training and "
        "serving namespaces)",
    )
    parser.add_argument("--mlflow", help="the MLflow tracking URL (the registry)")
    parser.add_argument("--model-name", help="the registered model (default: the run's conf)")
    parser.add_argument("--out", type=Path, help="the scenario file (default scenarios/NAME.yaml)")
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="what the run should have done instead (repeatable), e.g. branch=skip_deployment",
    )
    parser.add_argument("--evidence", type=Path, help="also keep the evidence read, as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def scenario_name(run_id: str) -> str:
    """A scenario name made of a run id: ``incident_`` and its letters and digits."""
    words = re.sub(r"[^a-z0-9]+", "_", run_id.lower()).strip("_")
    return f"incident_{words}"[:40].rstrip("_")


def _airflow(args: argparse.Namespace) -> Any:
    from harness.airflow.client import AirflowClient

    token = args.token or os.environ.get(TOKEN_ENV)
    user = args.user or os.environ.get(USER_ENV)
    password = args.password or os.environ.get(PASSWORD_ENV)
    if not token and not (user and password):
        raise SystemExit(
            f"error: no Airflow credentials: pass --user and --password (or set {USER_ENV} and "
            f"{PASSWORD_ENV}), or --token (or {TOKEN_ENV})"
        )
    verify: bool | str = True
    if args.ca_cert is not None:
        if not args.ca_cert.is_file():
            raise SystemExit(f"error: --ca-cert {args.ca_cert}: no such file")
        verify = str(args.ca_cert)
    return AirflowClient(args.airflow, user or "", password or "", token=token, verify=verify)


def _core_api(args: argparse.Namespace) -> Any:
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    if args.kubeconfig is None:
        return None
    if not args.kubeconfig.is_file():
        raise SystemExit(f"error: --kubeconfig {args.kubeconfig}: no such file")
    api_client = k8s_config.new_client_from_config(
        config_file=str(args.kubeconfig), context=args.context
    )
    return k8s.CoreV1Api(api_client)


def _out(args: argparse.Namespace) -> tuple[Path, str]:
    if args.out is None:
        name = scenario_name(args.run_id)
        return SCENARIOS_DIR / f"{name}.yaml", name
    name = args.out.stem
    if args.out.suffix not in (".yaml", ".yml") or not re.fullmatch(NAME_PATTERN, name):
        raise SystemExit(
            f"error: --out {args.out}: a scenario file is NAME.yaml, NAME of lower-case letters, "
            "digits and _ (starting with a letter, at most 40), since NAME is the scenario's"
        )
    return args.out, name


def public_url(url: str) -> str:
    """``url`` without a user or password in it (as the scenario file names its source)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host if parts.port is None else f"{host}:{parts.port}"))


def main(args: argparse.Namespace) -> int:
    """Reads the run, writes the scenario; prints what was read and what was not mapped."""
    from harness.airflow.client import AirflowApiError
    from harness.capture import (
        ExpectError,
        Sources,
        apply_expectations,
        evidence_summary,
        read_evidence,
        scenario_from,
        scrub,
        write_scenario,
    )
    from harness.scenarios.model import ScenarioError
    from ml_pipeline import registry
    from ml_pipeline.settings import PipelineSettings

    out, name = _out(args)
    settings = PipelineSettings()
    sources = Sources(
        airflow=_airflow(args),
        dag_id=args.dag_id,
        core_api=_core_api(args),
        namespaces=tuple(
            args.namespace or (settings.training_namespace, settings.serving_namespace)
        ),
        mlflow=registry.client_for(args.mlflow) if args.mlflow else None,
        model_name=args.model_name,
    )
    try:
        evidence = read_evidence(sources, args.run_id)
    except AirflowApiError as error:
        print(f"error: cannot read run {args.run_id} of {args.dag_id}: {error}", file=sys.stderr)
        return 1
    print(evidence_summary(evidence))
    if args.evidence:
        args.evidence.write_text(json.dumps(scrub(evidence), indent=1, default=str))
        print(f"evidence kept in {args.evidence}")
    capture = scenario_from(evidence, name)
    try:
        apply_expectations(capture, args.expect)
        write_scenario(capture, f"{public_url(args.airflow)} run {args.run_id}", out, args.force)
    except (ExpectError, ScenarioError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in capture.notes:
        print(f"  {note}")
    for item in capture.unmapped:
        print(f"  NOT MAPPED: {item}")
    print(f"wrote {out}; replay it with `python -m harness replay {out}`")
    return 0
