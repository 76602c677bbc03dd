"""No name or setting makes the harness remove, or write secrets into, anything it does not own."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import cli, paths
from harness.cluster.config import ClusterConfig
from harness.stack import StackConfig

BAD_NAMES = ["/", "..", ".", "", "../../etc", "/etc", "a/b", "a" * 33, "Upper", "ml_testbed", "x-"]


@pytest.fixture
def state(tmp_path, monkeypatch):
    root = tmp_path / "state"
    monkeypatch.setenv(paths.STATE_ENV, str(root))
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    return root


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_could_leave_the_state_root_is_refused(state, name):
    with pytest.raises(paths.UnsafePath, match="lower-case letters"):
        paths.state_dir(name)
    with pytest.raises(paths.UnsafePath):
        StackConfig(name)
    with pytest.raises(paths.UnsafePath):
        ClusterConfig(name=name)


@pytest.mark.parametrize("name", ["ml-testbed", "a", "a" * 32, "gpu-2"])
def test_a_plain_name_is_a_folder_directly_under_the_state_root(state, name):
    assert paths.state_dir(name) == state.resolve() / name


@given(st.text(max_size=40))
def test_any_accepted_name_stays_directly_under_the_state_root(name):
    try:
        folder = paths.state_dir(name)
    except paths.UnsafePath:
        return
    assert folder.parent == paths.state_root() and folder.name == name


@pytest.mark.parametrize("name", ["/", "..", "", "/tmp/elsewhere", "a" * 40])
def test_down_with_a_dangerous_name_is_refused_before_anything_is_removed(
    state, monkeypatch, capsys, name
):
    removed = []
    monkeypatch.setattr(shutil, "rmtree", lambda path, **_: removed.append(path))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["down", "--name", name])
    assert exit_.value.code == 2
    assert f"that name {name!r} is not allowed" in capsys.readouterr().err
    assert removed == []


@pytest.mark.parametrize("setting", ["/", "/tmp", "~"])
def test_a_state_root_that_is_not_a_folder_of_its_own_is_refused(monkeypatch, setting):
    monkeypatch.setenv(paths.STATE_ENV, setting)
    with pytest.raises(paths.UnsafePath, match="ML_TESTBED_STATE"):
        paths.state_dir("ml-testbed")


def test_removal_outside_the_harness_folders_is_refused_at_the_point_of_removal(state, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    state.mkdir()
    for target in (Path("/"), state, outside, state / ".." / "precious", tmp_path):
        with pytest.raises(paths.UnsafePath, match="refusing to remove"):
            paths.remove_owned(target)
    assert outside.is_dir() and state.is_dir()


def test_a_link_inside_the_state_root_is_removed_not_what_it_points_at(state, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data").write_text("keep")
    stack = state / "ml-testbed"
    stack.mkdir(parents=True)
    (stack / "link").symlink_to(outside)
    paths.remove_owned(stack / "link")
    paths.remove_owned(stack)
    assert not stack.exists()
    assert (outside / "data").read_text() == "keep"


def test_secrets_are_0600_from_their_first_byte_and_folders_0700(state, monkeypatch):
    previous = os.umask(0)
    modes = []
    real_write = os.write

    def write(descriptor, data):
        modes.append(stat.S_IMODE(os.fstat(descriptor).st_mode))
        return real_write(descriptor, data)

    monkeypatch.setattr(os, "write", write)
    try:
        secret = paths.write_private(state / "ml-testbed" / "home" / ".fernet_key", "s3cret")
    finally:
        os.umask(previous)
    assert modes == [0o600]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    for folder in (state, state / "ml-testbed", state / "ml-testbed" / "home"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_rewriting_a_secret_that_was_world_readable_narrows_it_first(state):
    state.mkdir()
    path = state / "token"
    path.write_text("old")
    path.chmod(0o644)
    paths.write_private(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "new"


def test_a_state_root_the_harness_made_is_private_and_one_it_did_not_make_is_left(state):
    paths.private_dir(paths.state_dir("ml-testbed"))
    assert stat.S_IMODE(state.stat().st_mode) == 0o700 and (state / paths.MARKER).exists()
    state.chmod(0o755)
    paths.private_dir(paths.state_dir("other"))
    assert stat.S_IMODE(state.stat().st_mode) == 0o700  # marked: the harness's own


def test_an_existing_folder_named_as_the_state_root_keeps_its_mode(tmp_path, monkeypatch):
    shared = tmp_path / "var" / "lib"
    shared.mkdir(parents=True, mode=0o755)
    shared.chmod(0o755)
    monkeypatch.setenv(paths.STATE_ENV, str(shared))
    paths.private_dir(paths.state_dir("ml-testbed"))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "ml-testbed").stat().st_mode) == 0o700


def test_a_link_in_the_state_root_is_refused_not_followed(state, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir(mode=0o755)
    outside.chmod(0o755)
    (state / "ml-testbed").mkdir(parents=True)
    (state / "ml-testbed" / "logs").symlink_to(outside)
    with pytest.raises(paths.UnsafePath, match="is a link or belongs to another user"):
        paths.private_dir(state / "ml-testbed" / "logs")
    assert stat.S_IMODE(outside.stat().st_mode) == 0o755


def test_the_scratch_folder_is_no_stack_name():
    with pytest.raises(paths.UnsafePath, match="the harness's own folder"):
        paths.check_name("scratch")
