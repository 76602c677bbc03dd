"""Scratch folders: removed on exit, and after a kill -9 by the next sweep, never while in use."""

import os
import subprocess
import sys

import pytest

from harness import paths, scratch


@pytest.fixture(autouse=True)
def _state_root_is_tmp_path(tmp_path, monkeypatch):
    # Scratch folders are removed only inside the harness's own folders.
    monkeypatch.setenv(paths.STATE_ENV, str(tmp_path))


def test_a_scratch_folder_is_removed_when_its_block_ends(tmp_path):
    with scratch.scratch_dir("unit", under=tmp_path) as folder:
        (folder / "file").write_text("x")
        assert folder.is_dir()
    assert not folder.exists()


def test_sweep_removes_only_the_folders_of_killed_owners(tmp_path):
    # A child makes a scratch folder and is killed with SIGKILL inside the block.
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from harness import scratch\n"
        "with scratch.scratch_dir('killed', under=Path(sys.argv[1])) as folder:\n"
        "    (folder / 'half-written').write_text('x')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    assert child.returncode == -9
    (orphan,) = tmp_path.iterdir()
    with scratch.scratch_dir("in-use", under=tmp_path) as in_use:
        unrelated = tmp_path / "not-ours"
        unrelated.mkdir()
        assert scratch.leftovers((tmp_path,)) == [orphan]
        assert scratch.sweep((tmp_path,)) == [orphan]
        assert not orphan.exists() and in_use.is_dir() and unrelated.is_dir()
    assert str(os.getpid()) in in_use.name


def test_a_scratch_folder_outside_the_harness_folders_is_never_removed(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.STATE_ENV, str(tmp_path / "state"))
    with pytest.raises(paths.UnsafePath), scratch.scratch_dir("stray", under=tmp_path) as folder:
        (folder / "file").write_text("x")
    assert (folder / "file").exists()
