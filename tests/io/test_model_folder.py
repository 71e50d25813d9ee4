"""ModelFolderDataset: round trips, atomic saves, and recovery from interrupted swaps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from kedro.io import DatasetError

from aot.datasets import ModelFolder, ModelFolderDataset
from aot.defender import Defender


class FakeModel:
    """Writes a config with a version number; can fail halfway through a save."""

    def __init__(self, version: int, fail_midway: bool = False) -> None:
        self.version = version
        self.fail_midway = fail_midway

    def save_pretrained(self, path: str) -> None:
        Path(path, "config.json").write_text(json.dumps({"version": self.version}))
        if self.fail_midway:
            raise OSError("disk vanished")
        Path(path, "model.safetensors").write_bytes(b"\0" * 16)

    @classmethod
    def from_pretrained(cls, path: str) -> FakeModel:
        return cls(json.loads(Path(path, "config.json").read_text())["version"])


def _dataset(path: Path) -> ModelFolderDataset:
    return ModelFolderDataset(path=str(path), loader=f"{__name__}.FakeModel")


def test_defender_round_trip(tmp_path: Path, tiny_defender_dir: Path) -> None:
    dataset = ModelFolderDataset(path=str(tmp_path / "defender"), loader="aot.defender.Defender")
    dataset.save(Defender.from_pretrained(tiny_defender_dir))
    loaded = dataset.load()
    assert isinstance(loaded, Defender)
    assert loaded.num_parameters() == Defender.from_pretrained(tiny_defender_dir).num_parameters()
    assert dataset.exists()
    assert "model_type" in dataset.preview()


def test_failed_save_keeps_the_previous_version(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path / "m")
    dataset.save(FakeModel(1))
    with pytest.raises(DatasetError, match="disk vanished"):
        dataset.save(FakeModel(2, fail_midway=True))
    assert dataset.load().version == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # the temporary folder was cleaned up
    dataset.save(FakeModel(3))
    assert dataset.load().version == 3


def test_sigkill_during_save_leaves_the_previous_version_loadable(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path / "m")
    dataset.save(FakeModel(1))
    script = textwrap.dedent(
        f"""
        import json, time
        from pathlib import Path
        from aot.datasets import ModelFolderDataset

        class Slow:
            def save_pretrained(self, path):
                Path(path, "config.json").write_text(json.dumps({{"version": 2}}))
                Path(path, "started").touch()
                time.sleep(60)

        ModelFolderDataset(path={str(tmp_path / "m")!r}).save(Slow())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while not list(tmp_path.glob(".m.tmp-*/started")):
        assert time.time() < deadline and proc.poll() is None, (
            "the saving process never started writing"
        )
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert dataset.load().version == 1


def test_interrupted_swap_is_recovered(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path / "m")
    dataset.save(FakeModel(1))
    # A crash between the two renames leaves only the backup behind.
    os.replace(tmp_path / "m", tmp_path / "m.previous")
    assert dataset.load().version == 1
    assert not (tmp_path / "m.previous").exists()


def test_missing_folder_and_bad_objects_give_clear_errors(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path / "absent")
    assert not dataset.exists()
    with pytest.raises(DatasetError, match="absent"):
        dataset.load()
    with pytest.raises(DatasetError, match="save_pretrained"):
        dataset.save(object())
    with pytest.raises(DatasetError, match="trust_remote_code"):
        ModelFolderDataset(path="x", load_args={"trust_remote_code": True})


def test_lazy_load_and_external_link(tmp_path: Path) -> None:
    source = _dataset(tmp_path / "source")
    source.save(FakeModel(5))
    linked = ModelFolderDataset(path=str(tmp_path / "linked"), lazy=True, external="link")
    linked.save(ModelFolder(tmp_path / "source"))
    assert (tmp_path / "linked").is_symlink()
    reference = linked.load()
    assert isinstance(reference, ModelFolder)
    assert FakeModel.from_pretrained(os.fspath(reference)).version == 5
    copied = _dataset(tmp_path / "copied")
    copied.save(ModelFolder(tmp_path / "source"))
    assert not (tmp_path / "copied").is_symlink() and copied.load().version == 5
