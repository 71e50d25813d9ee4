"""The project's default DVC remote needs no server: push and pull round-trip through it."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).with_name("dvc"))


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result


def test_default_remote_is_a_local_folder() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    remote = config["core"]["remote"]
    url = config[f"'remote \"{remote}\"'"]["url"]
    assert "://" not in url  # a plain path: no server, no credentials


def test_push_and_pull_round_trip_through_the_default_remote(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _run(repo, "git", "init", "-q")
    _run(repo, DVC, "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # the project's remote
    data = repo / "data" / "06_models" / "m"
    data.mkdir(parents=True)
    (data / "weights.bin").write_bytes(os.urandom(4096))
    original = (data / "weights.bin").read_bytes()
    _run(repo, DVC, "add", "-q", "data/06_models/m")
    _run(repo, DVC, "push", "-q")
    storage = (repo / ".dvc" / "../../aot-dvc-storage").resolve()
    assert any(storage.rglob("*")), "nothing reached the remote folder"
    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    _run(repo, DVC, "pull", "-q")
    assert (data / "weights.bin").read_bytes() == original
