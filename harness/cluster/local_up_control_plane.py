"""The control plane of a local-up cluster: etcd, kube-apiserver, controller-manager, scheduler.

Run as host processes the way upstream's hack/local-up-cluster.sh runs them. Everything listens on
loopback except the apiserver, which must advertise a non-loopback address: it binds the docker0
address only, which the host and both nodes reach.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import requests

from harness import processes
from harness.cluster import pki
from harness.cluster.kubeconfig import write_kubeconfig

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
APISERVER_PORT = 6443
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


@dataclass(frozen=True)
class ControlPlane:
    """Where the running control plane is and the credentials made for it."""

    state: Path
    host_ip: str
    ca: pki.KeyPair
    admin_kubeconfig: Path

    @property
    def server(self) -> str:
        """The apiserver's URL."""
        return f"https://{self.host_ip}:{APISERVER_PORT}"

    @property
    def pki_dir(self) -> Path:
        """Where the certificates live."""
        return self.state / "pki"


def prepare(state: Path, host_ip: str, cluster: str) -> ControlPlane:
    """Certificates and kubeconfigs for the control plane (kept across warm restarts)."""
    pki_dir = state / "pki"
    ca = pki.ensure_ca(pki_dir)
    pki.ensure_service_account_keys(pki_dir)
    pki.issue(
        ca,
        pki_dir,
        "apiserver",
        common_name="kube-apiserver",
        dns_names=(
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
        ),
        ip_addresses=("127.0.0.1", host_ip, SERVICE_IP),
    )
    pki.issue(
        ca,
        pki_dir,
        "apiserver-kubelet-client",
        common_name="kube-apiserver-kubelet-client",
        organizations=("system:masters",),
    )
    users = {
        "admin": ("kubernetes-admin", ("system:masters",)),
        "controller-manager": ("system:kube-controller-manager", ()),
        "scheduler": ("system:kube-scheduler", ()),
    }
    server = f"https://{host_ip}:{APISERVER_PORT}"
    for name, (common_name, organizations) in users.items():
        pair = pki.issue(ca, pki_dir, name, common_name=common_name, organizations=organizations)
        write_kubeconfig(
            state / f"{name}.kubeconfig",
            cluster=cluster,
            server=server,
            ca_cert=ca.cert,
            user=name,
            client_cert=pair.cert,
            client_key=pair.key,
        )
    return ControlPlane(state, host_ip, ca, state / "admin.kubeconfig")


def commands(plane: ControlPlane, bin_dir: Path) -> dict[str, list[str]]:
    """The command line of each control-plane process."""
    p, s = plane.pki_dir, plane.state
    etcd = shutil.which("etcd") or "/usr/bin/etcd"
    return {
        "etcd": [
            etcd,
            "--name",
            "ml-testbed",
            "--data-dir",
            str(s / "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{ETCD_PEER_PORT}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{ETCD_PEER_PORT}",
            "--initial-cluster",
            f"ml-testbed=http://127.0.0.1:{ETCD_PEER_PORT}",
        ],
        "kube-apiserver": [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            f"--bind-address={plane.host_ip}",
            f"--advertise-address={plane.host_ip}",
            f"--secure-port={APISERVER_PORT}",
            "--insecure-port=0",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--enable-admission-plugins=NodeRestriction",
            # Node names do not resolve here; kubelets are reached by their InternalIP.
            "--kubelet-preferred-address-types=InternalIP,Hostname",
        ],
        "kube-controller-manager": [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={s / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={s / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={s / 'controller-manager.kubeconfig'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--port=0",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
        ],
        "kube-scheduler": [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={s / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={s / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={s / 'scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--port=0",
        ],
    }


def start(plane: ControlPlane, bin_dir: Path, timeout: float = 60) -> None:
    """Starts whatever part of the control plane is not running and waits for the apiserver."""
    for name, argv in commands(plane, bin_dir).items():
        if processes.running_pid(plane.state, name) is None:
            processes.start(name, argv, state=plane.state)
        if name == "etcd":
            processes.wait_until(_etcd_healthy, state=plane.state, name=name, timeout=timeout)
        if name == "kube-apiserver":
            processes.wait_until(
                lambda: apiserver_ready(plane), state=plane.state, name=name, timeout=timeout
            )


def stop(state: Path) -> None:
    """Stops the control plane, newest component first."""
    for name in reversed(CONTROL_PLANE):
        processes.stop(state, name)


def _etcd_healthy() -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{ETCD_CLIENT_PORT}/health", timeout=2).ok
    except requests.RequestException:
        return False


def apiserver_ready(plane: ControlPlane) -> bool:
    """Whether the apiserver answers /readyz to the admin."""
    pair = plane.pki_dir / "admin.crt", plane.pki_dir / "admin.key"
    try:
        response = requests.get(
            f"{plane.server}/readyz", cert=pair, verify=plane.ca.cert, timeout=3
        )
    except requests.RequestException:
        return False
    return response.ok
