"""Crash-safe writes: whatever step a writer is killed at, and however the disk fails, the path a
later run loads holds a whole old or a whole new version, and no temporary file outlives the next
write."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from imdb_transformer import artifacts
from imdb_transformer.artifacts import atomic_path, sweep_stale
from imdb_transformer.callbacks import AtomicCheckpointIO

# Writes VERSION into FINAL (a folder of two files, or one file) through atomic_path, with every
# step that touches the final path or the temporary one counted; the process kills itself with
# SIGKILL just before step KILL_AT, as `kill -9` or a power cut would.
WRITER = textwrap.dedent(
    """
    import importlib.util, os, shutil, signal, sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("artifacts", sys.argv[6])  # the module alone: quick
    artifacts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(artifacts)
    final, version, kill_at, kind, exchange = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), *sys.argv[4:6]
    steps = [0]

    def counted(function):
        def step(*args, **kwargs):
            steps[0] += 1
            if steps[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)
        return step

    artifacts.os.replace = counted(os.replace)
    artifacts.shutil.rmtree = counted(shutil.rmtree)
    artifacts._flush = counted(artifacts._flush)
    artifacts._exchange = counted(artifacts._exchange if exchange == "yes" else lambda a, b: False)
    Path.rename = counted(Path.rename)
    with artifacts.atomic_path(final, is_dir=kind == "dir", overwrite=True) as tmp:
        if kind == "dir":
            (tmp / "a.txt").write_text(version * 1000)
            (tmp / "b.txt").write_text(version)
        else:
            tmp.write_text(version * 1000)
    print("steps", steps[0])
    """
)


def write(final: Path, version: str, kill_at: int, kind: str, exchange: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WRITER, str(final), version, str(kill_at), kind, exchange, artifacts.__file__],
        capture_output=True,
        text=True,
        timeout=60,
    )


def version_of(final: Path, kind: str) -> str:
    """Which whole version ``final`` holds; fails on a partial one."""
    if kind == "dir":
        a, b = (final / "a.txt").read_text(), (final / "b.txt").read_text()
        assert a == b * 1000, "a folder mixing two versions"
        return b
    text = final.read_text()
    assert text in ("old" * 1000, "new" * 1000), "a partial file"
    return text[:3]


@pytest.mark.parametrize(("kind", "exchange"), [("dir", "yes"), ("dir", "no"), ("file", "yes")])
def test_a_writer_killed_at_any_step_leaves_a_whole_version(tmp_path: Path, kind: str, exchange: str) -> None:
    final = tmp_path / ("index" if kind == "dir" else "last.ckpt")
    assert write(final, "old", 0, kind, exchange).returncode == 0
    kill_at, finished = 1, False
    while not finished:
        done = write(final, "new", kill_at, kind, exchange)
        finished = done.returncode == 0
        if not finished:
            assert done.returncode == -signal.SIGKILL, done.stderr
            sweep_stale(final)  # what the next writer does first
            assert version_of(final, kind) in ("old", "new")
            assert [p.name for p in tmp_path.iterdir()] == [final.name]  # no temporary folder left
            assert write(final, "old", 0, kind, exchange).returncode == 0  # back to the old one
        kill_at += 1
    assert kill_at > 3  # the kill landed on every step before the writer could finish
    assert version_of(final, kind) == "new"


def test_a_killed_write_leaves_the_final_path_whole_even_before_any_sweep(tmp_path: Path) -> None:
    final = tmp_path / "index"
    assert write(final, "old", 0, "dir", "yes").returncode == 0
    for kill_at in range(1, 6):
        write(final, "new", kill_at, "dir", "yes")
        assert version_of(final, "dir") in ("old", "new")  # readable right after the kill


def test_a_full_disk_keeps_the_previous_checkpoint_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)
    before = path.read_bytes()

    def full(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(bytes(data)[: len(data) // 3])  # a third reaches the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError) as failed:
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(path)  # the final name
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_checkpoints_are_written_beside_their_place_never_through_the_system_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))

    def no_copy(*args: object, **kwargs: object) -> None:
        raise AssertionError("a checkpoint was copied across folders")

    for name in ("move", "copyfile", "copy2", "copy"):
        monkeypatch.setattr(shutil, name, no_copy)
    path = tmp_path / "run" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, path)
    AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(3))
    assert list(system_tmp.iterdir()) == []


def test_a_file_in_the_way_of_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "index").write_text("notes")
    with pytest.raises(FileExistsError), atomic_path(tmp_path / "index", is_dir=True, overwrite=True):
        pass
    assert (tmp_path / "index").read_text() == "notes"


def test_a_temporary_folder_of_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    live = tmp_path / f".index.{os.getpid()}.abc.tmp"
    live.mkdir()
    dead = tmp_path / ".index.999999999.abc.tmp"
    dead.mkdir()
    sweep_stale(tmp_path / "index")
    assert live.is_dir() and not dead.exists()
    assert artifacts.glob_escape("a[b]*?") == "a[[]b][*][?]"
