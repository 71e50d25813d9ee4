"""Every Attacker folder the catalog holds loads through one loader: the box editor, and a stock
diffusers editor (a tiny Qwen-Image-Edit built from configs) with its planner saved beside it;
the loaded Qwen-Image-Edit Attacker then edits through the curriculum path as the box editor
does."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from aot.attacker import (
    AttackerConfig,
    AttackerPipeline,
    BoxEditPipeline,
    EditPlanner,
    PipelineWithPlanner,
    build_box_edit_pipeline,
    with_planner,
)
from aot.attacker.qwen_edit import build_tiny_qwen_image_edit, is_qwen_image_edit
from aot.datasets import ModelFolderDataset
from aot.selfplay.curriculum import attack_records
from aot.world import QuestionConfig, WorldConfig, make_questions, sample_scene

LOADER = "aot.attacker.AttackerPipeline"


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


class YesDefender:
    """A stand-in Defender (this test is about the editor): Yes to everything, n times."""

    def generate(self, images: Sequence[Any], prompts: Sequence[str], *, n: int = 1, **_: Any):
        return [["\\boxed{Yes}"] * n for _ in prompts]


def test_the_box_editor_round_trips_with_its_planner(
    tmp_path: Path, tiny_config: AttackerConfig, random_planner: Any
) -> None:
    pipe = build_box_edit_pipeline(tiny_config, 0)
    pipe.planner = random_planner(0)
    dataset = ModelFolderDataset(path=str(tmp_path / "box"), loader=LOADER)
    dataset.save(with_planner(pipe))
    loaded = dataset.load()
    assert isinstance(loaded, BoxEditPipeline) and _same(loaded.planner, pipe.planner)
    assert _same(loaded.unet, pipe.unet)
    half = AttackerPipeline.from_pretrained(dataset.path, torch_dtype="bfloat16")  # as YAML says
    assert half.unet.dtype == torch.bfloat16 and half.planner is not None


@pytest.fixture(scope="module")
def qwen_attacker(
    tmp_path_factory: pytest.TempPathFactory, random_planner: Any
) -> tuple[Any, EditPlanner]:
    """A tiny Qwen-Image-Edit + planner, saved through the catalog dataset and loaded back."""
    pipe = build_tiny_qwen_image_edit(seed=0)
    pipe.planner = random_planner(1)
    wrapped = with_planner(pipe)
    assert isinstance(wrapped, PipelineWithPlanner)  # diffusers alone would drop the planner
    dataset = ModelFolderDataset(
        path=str(tmp_path_factory.mktemp("qie") / "attacker"), loader=LOADER
    )
    dataset.save(wrapped)
    assert (dataset.path / "planner").is_dir()
    return dataset.load(), pipe.planner


def test_a_qwen_image_edit_attacker_loads_with_its_planner(qwen_attacker: tuple) -> None:
    loaded, planner = qwen_attacker
    assert is_qwen_image_edit(loaded)
    assert loaded.planner is not None and _same(loaded.planner, planner)


def test_a_qwen_image_edit_attacker_edits_through_the_curriculum_path(qwen_attacker: tuple) -> None:
    loaded, _ = qwen_attacker
    rng = np.random.default_rng(0)
    rows, images, scenes = [], {}, {}
    for i in range(3):
        scene = sample_scene(rng, WorldConfig(image_size=112), f"qload_{i}")
        images[scene.scene_id], scenes[scene.scene_id] = scene.render(), scene
        for record in make_questions(scene, rng, QuestionConfig())[:2]:
            rows.append({**record, "graph": json.dumps(scene.to_dict())})
    attacked, edited = attack_records(
        loaded,
        YesDefender(),
        pd.DataFrame(rows),
        images,
        scenes,
        edits_per_record=2,
        sampling_steps=2,
        noise_level=0.7,
        k=1,
        batch_size=8,
        seed=0,
        prefix="qie",
        reward={"validity_mode": "off"},
    )
    assert len(attacked) == 2 * len(rows) and set(attacked["image"]) == set(edited)
    assert set(attacked["edit_kind"]) <= {"add", "replace"}  # the loaded planner's kinds
    changed = 0
    for row in attacked.to_dict("records"):
        clean = np.asarray(images[row["clean_image"]])
        out = np.asarray(edited[row["image"]])
        assert out.shape == clean.shape
        x0, y0, x1, y1 = row["edit_box"]
        outside = np.ones(clean.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        assert (out[outside] == clean[outside]).mean() > 0.95  # the edit stays in its box
        changed += int((out[y0:y1, x0:x1] != clean[y0:y1, x0:x1]).any())
    assert changed == len(attacked)  # and every edit did change its box


def test_bad_attacker_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        AttackerPipeline.from_pretrained(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "NoSuchPipeline"}))
    with pytest.raises(ValueError, match="NoSuchPipeline"):
        AttackerPipeline.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="safetensors"):
        AttackerPipeline.from_pretrained(tmp_path, use_safetensors=False)
