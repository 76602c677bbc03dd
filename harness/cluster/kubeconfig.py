"""Kubeconfig files: for the cluster's own components, the admin, and Airflow's restricted user."""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.paths import write_private


def write_kubeconfig(
    path: Path,
    *,
    cluster: str,
    server: str,
    ca_cert: Path,
    user: str,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    """Writes a one-context kubeconfig (certificate or token credentials) and returns its path."""
    credentials: dict[str, str] = {}
    if client_cert and client_key:
        credentials = {"client-certificate": str(client_cert), "client-key": str(client_key)}
    if token:
        credentials = {"token": token}
    context: dict[str, str] = {"cluster": cluster, "user": user}
    if namespace:
        context["namespace"] = namespace
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": server, "certificate-authority": str(ca_cert)}}
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": f"{user}@{cluster}", "context": context}],
        "current-context": f"{user}@{cluster}",
    }
    write_private(path, yaml.safe_dump(document, sort_keys=False))
    return path
