"""What a Flow-GRPO step samples: the (scene, question) items it attacks, and a rollout of edits.

``build_items`` turns a record table into ``AttackItem``s (with the plan space of each);
``run_edit_pass`` runs the box editor's Flow-GRPO SDE over a batch and keeps its trace;
``Rollout`` holds a step's plans, passes and edited images for the reward and the update.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from aot.attacker.crops import paste_back, to_crops
from aot.attacker.flow_grpo_config import FlowGRPOConfig
from aot.attacker.flow_sampler import CropConditioning, UNetCropEditor, sample_flow_sde
from aot.attacker.pipeline import BoxEditPipeline
from aot.attacker.planner import EditPlan, PlannerConfig, PlanSpace, plan_space
from aot.attacker.sde import SampleTrace
from aot.world import Scene


@dataclass
class AttackItem:
    """One (scene, question): the record row, its clean image, graph and plan space, and the
    frozen Defender's answers on the clean image."""

    row: dict[str, Any]
    image: np.ndarray
    scene: Scene | None
    space: PlanSpace
    clean_answers: list[str] | None = None

    @property
    def prompt_key(self) -> str:
        return str(self.row.get("record_id", self.row["question"]))


def _load_image(images: Mapping[str, Any], key: str) -> np.ndarray:
    if key not in images:
        raise KeyError(f"image {key!r} is referenced by a record but missing from the images")
    value = images[key]
    value = value() if callable(value) else value
    return np.asarray(value.convert("RGB")) if isinstance(value, Image.Image) else np.asarray(value)


def _scene_of(row: Mapping[str, Any], scenes: Mapping[str, Scene] | None) -> Scene | None:
    graph = row.get("graph")
    if isinstance(graph, str) and graph:
        return Scene.from_dict(json.loads(graph))
    if isinstance(graph, Mapping):
        return Scene.from_dict(dict(graph))
    if isinstance(graph, Scene):
        return graph
    if scenes is not None:
        key = row.get("scene_id")
        return scenes.get(key) if key is not None else None
    return None


def build_items(
    records: pd.DataFrame,
    images: Mapping[str, Any],
    planner_config: PlannerConfig,
    scenes: Mapping[str, Scene] | pd.DataFrame | None = None,
    max_records: int | None = None,
) -> list[AttackItem]:
    """Items for the records that have at least one valid edit. The scene graph comes from a
    ``graph`` column (JSON of ``Scene.to_dict``), else from ``scenes`` (a scene table with
    ``scene_id`` / ``graph`` columns, or a dict) by ``scene_id``; without one only add edits
    off the target boxes are offered and the guard cannot re-derive the answer."""
    missing = [
        c for c in ("question", "answer", "family", "target_boxes", "image") if c not in records
    ]
    if missing:
        raise ValueError(f"train_attacker_flow_grpo: records lack column(s) {missing}")
    rows = records.to_dict("records")
    if max_records is not None:
        rows = rows[:max_records]
    if isinstance(scenes, pd.DataFrame):
        # only the scenes these rows show: the table holds every scene of the split
        wanted = {row.get("scene_id") for row in rows}
        scenes = {
            sid: Scene.from_dict(json.loads(g))
            for sid, g in zip(scenes["scene_id"], scenes["graph"], strict=True)
            if sid in wanted
        }
    items = []
    for row in rows:
        row["options"] = list(row["options"]) if row.get("options") is not None else []
        row["target_boxes"] = [[int(v) for v in b] for b in row["target_boxes"]]
        image = _load_image(images, row["image"])
        scene = _scene_of(row, scenes)
        space = plan_space(image, row, scene, planner_config)
        if space.any_valid:
            items.append(AttackItem(row, image, scene, space))
    return items


@dataclass
class EditPass:
    """One editor pass over a subset ``idx`` of the rollout's samples."""

    idx: torch.Tensor
    cond: CropConditioning
    trace: SampleTrace


@dataclass
class Rollout:
    """A batch of sampled edits: groups of ``group_size`` plans per item, the editor passes
    that drew them and the resulting images (HWC uint8)."""

    items: list[AttackItem]
    groups: np.ndarray
    plans: list[EditPlan]
    actions: torch.Tensor
    plan_log_probs: torch.Tensor
    passes: list[EditPass]
    edited: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.plans)


RewardFn = Callable[[Rollout], dict[str, np.ndarray]]


def run_edit_pass(
    editor: UNetCropEditor,
    pipe: BoxEditPipeline,
    images: list[torch.Tensor],
    boxes: list[tuple[int, int, int, int]],
    class_ids: list[int],
    config: FlowGRPOConfig,
    generator: torch.Generator,
    reference: UNetCropEditor | None,
) -> tuple[list[torch.Tensor], CropConditioning, SampleTrace]:
    """Edited uint8 images (3,H,W), the conditioning and the SDE trace of one batched pass."""
    src, mask, windows = to_crops(images, boxes, pipe.config.crop_size, pipe.config.crop_scale)
    cond = CropConditioning(src, mask, torch.tensor(class_ids, dtype=torch.long))
    crops, trace = sample_flow_sde(
        editor,
        pipe.scheduler,
        cond,
        src.shape,
        config.sampling_steps,
        config.noise_level,
        generator,
        mask=mask,
        known=src,
        reference=reference,
        device=pipe.unet.device,
    )
    return list(paste_back(images, crops.cpu(), windows, boxes)), cond, trace
