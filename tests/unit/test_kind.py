"""The kind provider's pieces that need no cluster: the runc wrapper, the kind and node-image
configuration, image names in containerd, and which cgroup hierarchies local-up uses."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cluster import engine, gpus, kind_image
from harness.cluster.config import ClusterConfig
from harness.cluster.kind import KindProvider, containerd_reference
from harness.cluster.local_up_nodes import cgroup_v1_hierarchies

CAPABILITIES = ["CAP_CHOWN", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_KILL"]
# kubeadm v1.20.2's `kubeadm config images list`.
KUBEADM_IMAGES = [
    "k8s.gcr.io/kube-apiserver:v1.20.2",
    "k8s.gcr.io/kube-controller-manager:v1.20.2",
    "k8s.gcr.io/kube-scheduler:v1.20.2",
    "k8s.gcr.io/kube-proxy:v1.20.2",
    "k8s.gcr.io/pause:3.2",
    "k8s.gcr.io/etcd:3.4.13-0",
    "k8s.gcr.io/coredns:1.7.0",
]


def _wrapper(bin_dir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(engine.RUNTIME_WRAPPER), *arguments],
        env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )


# A command line that names the capability: only the capability sets may change.
ARGS = ["sh", "-c", "echo CAP_SYS_RESOURCE", "CAP_SYS_RESOURCE"]


def _spec(capabilities: list[str], layout: str = "compact") -> str:
    sets = {name: capabilities for name in ("bounding", "effective", "permitted", "inheritable")}
    document = {"ociVersion": "1.0.2", "process": {"capabilities": sets, "args": ARGS}}
    if layout == "indented":
        return json.dumps(document, indent=2)
    return json.dumps(document, separators=(", ", ": ") if layout == "spaced" else (",", ":"))


@settings(max_examples=40, deadline=None)
@given(
    capabilities=st.lists(st.sampled_from(CAPABILITIES), unique=True, max_size=5),
    layout=st.sampled_from(["compact", "spaced", "indented"]),
)
def test_the_wrapper_drops_only_cap_sys_resource_from_a_bundle(
    tmp_path_factory, capabilities, layout
):
    tmp_path = tmp_path_factory.mktemp("bundle")
    bin_dir = _fake_runc_in(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(_spec(capabilities, layout))
    arguments = ["--root", "/run/x", "create", "--bundle", str(bundle), "--pid-file", "p", "id"]
    done = _wrapper(bin_dir, *arguments)
    assert done.returncode == 7, done.stderr  # runc's own exit status comes back
    assert (tmp_path / "arguments").read_text().split() == arguments
    seen = json.loads((tmp_path / "seen.json").read_text())
    expected = [c for c in capabilities if c != "CAP_SYS_RESOURCE"]
    assert all(kept == expected for kept in seen["process"]["capabilities"].values())
    assert seen["process"]["args"] == ARGS


def _fake_runc_in(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runc = bin_dir / "runc"
    runc.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {tmp_path}/arguments\n'
        "while [ $# -gt 0 ]; do\n"
        '  case "$1" in\n'
        f'    --bundle) cp "$2/config.json" {tmp_path}/seen.json ;;\n'
        f'    --process) cp "$2" {tmp_path}/seen.json ;;\n'
        "  esac\n"
        "  shift\n"
        "done\n"
        "exit 7\n"
    )
    runc.chmod(0o755)
    return bin_dir


def test_the_wrapper_drops_it_from_an_exec_process_and_from_bundle_equals(tmp_path):
    bin_dir = _fake_runc_in(tmp_path)
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"capabilities": {"bounding": ["CAP_SYS_RESOURCE"]}}))
    assert _wrapper(bin_dir, "exec", "--process", str(process), "id").returncode == 7
    assert json.loads((tmp_path / "seen.json").read_text()) == {"capabilities": {"bounding": []}}
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "config.json").write_text(_spec(["CAP_SYS_RESOURCE", "CAP_KILL"]))
    _wrapper(bin_dir, "run", f"--bundle={bundle}", "id")
    capabilities = json.loads((bundle / "config.json").read_text())["process"]["capabilities"]
    assert all(kept == ["CAP_KILL"] for kept in capabilities.values())


def test_the_wrapper_leaves_other_commands_and_specs_alone(tmp_path):
    bin_dir = _fake_runc_in(tmp_path)
    bundle = tmp_path / "b"
    bundle.mkdir()
    spec = _spec(["CAP_KILL"])
    (bundle / "config.json").write_text(spec)
    before = (bundle / "config.json").stat().st_mtime_ns
    assert _wrapper(bin_dir, "create", "--bundle", str(bundle), "id").returncode == 7
    assert (bundle / "config.json").read_text() == spec
    assert (bundle / "config.json").stat().st_mtime_ns == before  # not even rewritten
    assert _wrapper(bin_dir, "state", "id").returncode == 7
    assert (tmp_path / "arguments").read_text().split() == ["state", "id"]


def test_cap_sys_resource_is_read_from_the_bounding_set(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapBnd:\t000001fffeffffff\n")  # the project's machine
    assert not engine.grants_sys_resource(status)
    status.write_text("Name:\tx\nCapBnd:\t000001ffffffffff\n")
    assert engine.grants_sys_resource(status)


def test_dockerd_gets_the_wrapper_as_default_runtime_only_without_the_capability(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("ML_TESTBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(engine, "grants_sys_resource", lambda: False)
    arguments = engine._dockerd_arguments()
    installed = tmp_path / "cache" / "bin" / engine.RUNTIME_WRAPPER.name
    assert f"--add-runtime={engine.RUNTIME_NAME}={installed}" in arguments
    assert f"--default-runtime={engine.RUNTIME_NAME}" in arguments
    assert installed.read_bytes() == engine.RUNTIME_WRAPPER.read_bytes()
    assert os.access(installed, os.X_OK)
    monkeypatch.setattr(engine, "grants_sys_resource", lambda: True)
    assert not any("runtime" in argument for argument in engine._dockerd_arguments())


def test_a_daemon_without_the_wrapper_is_named_with_what_to_do(monkeypatch):
    monkeypatch.setattr(engine, "grants_sys_resource", lambda: False)
    monkeypatch.setattr(
        engine.subprocess,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout="runc\n", stderr=""),
    )
    usable, why = engine.privileged_containers_work()
    assert not usable
    assert "CAP_SYS_RESOURCE" in why and "default runtime is runc" in why
    assert "harness/cluster/kind_node/runc-without-sys-resource" in why
    assert f"--default-runtime={engine.RUNTIME_NAME}" in why


def test_the_kind_config_has_the_gpu_worker_and_the_local_images_own_network():
    provider = KindProvider(ClusterConfig(name="t1"))
    local = provider.kind_config(local_image=True)
    assert local["networking"] == {"disableDefaultCNI": True}
    roles = [node["role"] for node in local["nodes"]]
    assert roles == ["control-plane", "worker", "worker"]
    (patch,) = local["nodes"][2]["kubeadmConfigPatches"]
    join = yaml.safe_load(patch)["nodeRegistration"]
    assert join["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert all(
        f"{k}={v}" in join["kubeletExtraArgs"]["node-labels"]
        for k, v in ClusterConfig().gpu_labels.items()
    )
    for worker in local["nodes"][1:]:
        assert worker["extraMounts"][0]["containerPath"] == provider.shared_data_path
    # The device plugin's DaemonSet reads the topology folder of the state inside the GPU node.
    topology = {
        "hostPath": str(gpus.topology_file("t1", "x").parent),
        "containerPath": "/ml-testbed/gpus",
    }
    assert topology in local["nodes"][2]["extraMounts"]
    assert topology not in local["nodes"][1]["extraMounts"]
    assert "networking" not in provider.kind_config(local_image=False)
    assert provider.gpu_nodes == ("t1-worker2",) and provider.cpu_nodes == ("t1-worker",)


@pytest.mark.parametrize(
    ("image", "reference"),
    [
        ("ml-testbed/trainer:0123", "docker.io/ml-testbed/trainer:0123"),
        ("ml-testbed/base:bookworm", "docker.io/ml-testbed/base:bookworm"),
        ("debian:bookworm-slim", "docker.io/library/debian:bookworm-slim"),
        ("busybox", "docker.io/library/busybox:latest"),
        ("registry.local:5000/team/x:1", "registry.local:5000/team/x:1"),
        ("localhost/x", "localhost/x:latest"),
    ],
)
def test_image_names_as_containerd_has_them(image, reference):
    assert containerd_reference(image) == reference


def test_every_image_kubeadm_asks_for_has_a_recipe_but_coredns():
    recipes = kind_image.control_plane_recipes(KUBEADM_IMAGES, "base:x", "pause:y")
    assert [r.name for r in recipes] == KUBEADM_IMAGES[:-1]
    by_name = {r.name.split("/")[1].split(":")[0]: r for r in recipes}
    assert by_name["kube-apiserver"].binary == "kube-apiserver"
    assert (
        "COPY kube-apiserver /usr/local/bin/kube-apiserver" in by_name["kube-apiserver"].dockerfile
    )
    assert "etcd-server" in by_name["etcd"].dockerfile and by_name["etcd"].binary is None
    assert "iptables" in by_name["kube-proxy"].dockerfile
    assert by_name["pause"].dockerfile == "FROM pause:y\n"
    with pytest.raises(RuntimeError, match=r"k8s.gcr.io/new-thing:1.*kind_image.py"):
        kind_image.control_plane_recipes(["k8s.gcr.io/new-thing:1"], "base:x", "pause:y")


def test_the_node_image_copies_every_node_file_and_enables_its_units():
    dockerfile = kind_image.node_dockerfile("base:x")
    for name, (target, _) in kind_image.NODE_FILES.items():
        assert f"COPY {name} {target}" in dockerfile
        assert (kind_image.NODE_FILES_DIR / name).is_file()
    assert "systemctl enable containerd.service ml-testbed-images.service kubelet.service" in (
        dockerfile
    )
    assert 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' in dockerfile
    assert f"echo v{kind_image.KUBERNETES_VERSION} > /kind/version" in dockerfile


def test_the_node_image_tag_follows_its_inputs(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in (*kind_image.NODE_BINARIES, "kube-apiserver"):
        (bin_dir / name).write_bytes(b"binary")
    files = tmp_path / "files"
    files.mkdir()
    for name in kind_image.NODE_FILES:
        (files / name).write_text(name)
    monkeypatch.setattr(kind_image, "NODE_FILES_DIR", files)
    recipes = kind_image.control_plane_recipes(KUBEADM_IMAGES[:1], "base:x", "pause:y")

    def tag() -> str:
        return kind_image.node_image_tag("sha256:base", "pause:y", bin_dir, recipes)

    first = tag()
    assert first.startswith(f"v{kind_image.KUBERNETES_VERSION}-") and tag() == first
    (files / "entrypoint").write_text("changed")
    second = tag()
    assert second != first
    os.utime(bin_dir / "kube-apiserver", ns=(1, 1))  # a rebuilt binary
    assert tag() != second
    assert kind_image.node_image_tag("sha256:other", "pause:y", bin_dir, recipes) != tag()


def test_local_up_uses_only_the_mounted_cgroup_hierarchies(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "tmpfs /sys/fs/cgroup tmpfs ro,relatime,mode=755 0 0\n"
        "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
        "systemd /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n"
        "proc /proc proc rw 0 0\n"
    )
    # What a failed privileged container start left in a host's /sys/fs/cgroup (issue 17):
    # folders such as hugetlb and cpu,cpuacct that are not mounts are not in the list.
    assert cgroup_v1_hierarchies(mounts) == [
        Path("/sys/fs/cgroup/cpu"),
        Path("/sys/fs/cgroup/memory"),
        Path("/sys/fs/cgroup/systemd"),
    ]


def test_every_kind_kubelet_reports_its_status_as_often_as_local_ups():
    document = KindProvider(ClusterConfig(name="t1")).kind_config(local_image=False)
    (patch,) = document["kubeadmConfigPatches"]
    assert yaml.safe_load(patch) == {
        "kind": "KubeletConfiguration",
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "nodeStatusUpdateFrequency": "4s",
    }


class _Running:
    name = "local-up"

    def info(self):
        return object()


def test_a_cluster_running_on_one_provider_is_not_made_again_on_another(monkeypatch):
    from harness import cluster

    monkeypatch.setattr(cluster, "_remembered", lambda config: "local-up")
    monkeypatch.setattr(cluster, "_named", lambda *a: _Running())
    monkeypatch.setenv(cluster.PROVIDER_ENV, "kind")
    config = ClusterConfig(name="t2")
    with pytest.raises(cluster.ProviderUnavailable, match=r"runs on local-up.*asks for kind"):
        cluster.up(config)
    with pytest.raises(cluster.ProviderUnavailable, match=r"--provider asks for kind"):
        cluster.up(config, "kind")
    monkeypatch.setattr(_Running, "info", lambda self: None)  # stopped: no refusal
    cluster._refuse_a_second_provider(config, "kind", None)


class _Made(Exception):
    """cluster.up went past the check."""


def test_a_docker_save_archive_is_renamed_and_keeps_its_layers(tmp_path):
    source, target = tmp_path / "built.tar", tmp_path / "images.tar"
    manifest = [{"Config": "c.json", "RepoTags": ["ml-testbed/x:a-1"], "Layers": ["l/layer.tar"]}]
    with tarfile.open(source, "w") as archive:
        for name, data in [
            ("manifest.json", json.dumps(manifest).encode()),
            ("repositories", b'{"ml-testbed/x": {"a-1": "0"}}'),
            ("l/layer.tar", b"layer bytes"),
        ]:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    kind_image.renamed_archive(source, target, {"ml-testbed/x:a-1": "k8s.gcr.io/a:1"})
    with tarfile.open(target) as renamed:
        assert renamed.getnames() == ["manifest.json", "l/layer.tar"]
        (image,) = json.load(renamed.extractfile("manifest.json"))
        assert image["RepoTags"] == ["k8s.gcr.io/a:1"] and image["Layers"] == ["l/layer.tar"]
        assert renamed.extractfile("l/layer.tar").read() == b"layer bytes"


def test_the_provider_asked_for_comes_before_the_one_that_ran_last(monkeypatch):
    from harness import cluster

    chosen = []

    def choose(config, requested, kubeconfig=None):
        chosen.append(requested)
        raise _Made

    monkeypatch.setattr(cluster, "_remembered", lambda config: "local-up")
    monkeypatch.setattr(cluster, "_named", lambda *a: _Stopped())
    monkeypatch.setattr(cluster, "choose_provider", choose)
    monkeypatch.setenv(cluster.PROVIDER_ENV, "kind")
    for requested in (None, "local-up"):
        with pytest.raises(_Made):
            cluster.up(ClusterConfig(name="t3"), requested)
    monkeypatch.delenv(cluster.PROVIDER_ENV)
    with pytest.raises(_Made):
        cluster.up(ClusterConfig(name="t3"))
    assert chosen == ["kind", "local-up", "local-up"]


class _Stopped:
    def info(self):
        return None


def test_without_a_registry_a_cgroup_v2_host_is_told_why_kind_cannot_work(tmp_path, monkeypatch):
    from harness.cluster import kind

    marker = tmp_path / "cgroup.controllers"
    monkeypatch.setattr(kind, "CGROUP_V2_MARKER", marker)
    assert kind.local_node_image_unusable() is None
    marker.write_text("cpu memory\n")
    assert "cgroup v1 hosts only" in kind.local_node_image_unusable()
    monkeypatch.setattr(kind, "registry_answers", lambda: False)
    monkeypatch.setattr(kind, "kind_binary", lambda: "/usr/bin/kind")
    monkeypatch.setattr(kind, "docker_answers", lambda: False)
    usable, why = kind.kind_usable()
    assert not usable and "cgroup v2" in why


def test_a_kind_cluster_without_the_topology_mount_is_named_with_what_to_do(monkeypatch):
    provider = KindProvider(ClusterConfig(name="t1"))
    mounts = {"t1-worker2": "/mnt/ml-testbed-shared /var "}

    def inspect(argv, **_):
        return SimpleNamespace(returncode=0, stdout=mounts[argv[-1]])

    monkeypatch.setattr("harness.cluster.kind.subprocess.run", inspect)
    with pytest.raises(RuntimeError, match="made by an older harness: its GPU worker t1-worker2"):
        provider._check_topology_mounts()
    mounts["t1-worker2"] += "/ml-testbed/gpus "
    provider._check_topology_mounts()


def test_a_gpu_runtime_in_the_hosts_mount_namespace_is_refused(tmp_path, monkeypatch):
    from harness.cluster import local_up_nodes

    node = local_up_nodes.NodeSpec(
        "g", "10.0.0.2", 1, 2, "unix:///x.sock", namespace_of=local_up_nodes.GPU_RUNTIME_PROCESS
    )
    plane = SimpleNamespace(state=tmp_path, ca=None, pki_dir=tmp_path, server="https://x")
    monkeypatch.setattr(local_up_nodes.processes, "running_pid", lambda state, name: (
        None if name == node.process else 4242
    ))  # fmt: skip
    monkeypatch.setattr(local_up_nodes.pki, "issue", lambda *a, **k: SimpleNamespace(
        cert=tmp_path / "c", key=tmp_path / "k"
    ))  # fmt: skip
    monkeypatch.setattr(local_up_nodes, "write_kubeconfig", lambda path, **_: path)
    monkeypatch.setattr(local_up_nodes.os, "readlink", lambda path: "mnt:[4026531841]")
    started = []
    monkeypatch.setattr(local_up_nodes.processes, "start", lambda *a, **k: started.append(a))
    plane.ca = SimpleNamespace(cert=tmp_path / "ca")
    with pytest.raises(RuntimeError, match="runs in the host's mount namespace"):
        local_up_nodes.start_kubelet(node, plane, tmp_path, "pause:x")
    assert started == []
