"""The pretrained tiny Defender ships in git, and it is the one `dvc.lock` records.

`dvc.yaml` marks the `base_defender` stage's two model folders `cache: false`: git holds them,
so a fresh clone (no DVC remote to pull from) skips the 16-minute pretraining the way a user of
a real model downloads its base checkpoint. DVC reruns the stage only when what it depends on
changes. That only works while the committed files hash to what `dvc.lock` says.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("data/06_models/defender_initial", "data/06_models/defender_base")


def _stage_outs(document: dict, stage: str) -> dict[str, dict]:
    outs = {}
    for out in document["stages"][stage]["outs"]:
        if isinstance(out, dict):
            outs.update(out)
        else:
            outs[out] = {}
    return outs


def test_the_pretraining_outputs_are_kept_in_git_not_in_the_dvc_cache() -> None:
    outs = _stage_outs(yaml.safe_load((ROOT / "dvc.yaml").read_text()), "base_defender")
    assert set(outs) == set(FOLDERS)
    assert all(options.get("cache") is False for options in outs.values()), outs
    tracked = subprocess.run(
        ["git", "ls-files", *FOLDERS], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for folder in FOLDERS:
        assert f"{folder}/model.safetensors" in tracked, f"{folder} is not committed"


def test_the_committed_checkpoints_are_the_ones_dvc_lock_records() -> None:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        outs = {out.def_path: out for out in repo.stage.collect("base_defender")[0].outs}
        for folder in FOLDERS:
            recorded, committed = outs[folder].hash_info.value, outs[folder].get_hash().value
            assert committed == recorded, (
                f"{folder} differs from dvc.lock: commit the folder the last `dvc repro` wrote"
            )


def test_the_committed_base_defender_is_trained() -> None:
    from aot.defender import Defender

    initial = Defender.from_pretrained(ROOT / FOLDERS[0]).model.state_dict()
    base = Defender.from_pretrained(ROOT / FOLDERS[1]).model.state_dict()
    assert initial.keys() == base.keys()
    changed = [name for name in initial if not torch.equal(initial[name], base[name])]
    assert len(changed) > len(initial) // 2
