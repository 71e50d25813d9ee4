"""Training conversations for the Defender, built from record tables and images."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from aot.defender.dense import dense_targets, question_targets
from aot.defender.sft import SFTExample
from aot.rewards import PromptStyle, make_prompt, target_completion
from aot.world import FAMILIES, Edit, Scene, apply_edit


def load_image(images: Mapping[str, Any], key: str) -> Any:
    if key not in images:
        raise KeyError(f"image '{key}' is referenced by a record but missing from the image folder")
    value = images[key]
    return (value() if callable(value) else value).convert("RGB")


def edited_graph(scene: Scene, row: Mapping[str, Any]) -> Scene | None:
    """The scene graph of an implanted pair's edited image (None if it cannot be rebuilt)."""
    try:
        box = tuple(int(v) for v in row["distractor_box"])
        edit = Edit("add", box, row["distractor_shape"], row["distractor_color"])
        return apply_edit(scene, edit)
    except (KeyError, ValueError, TypeError):
        return None


def world_examples(
    records: pd.DataFrame,
    images: Mapping[str, Any],
    graphs: Mapping[str, Scene] | None = None,
    *,
    image_column: str = "image",
    mode: str = "word",
    style: PromptStyle = "protocol",
    turns: int = 1,
    repeats: int = 1,
    seed: int = 0,
    family_weights: Mapping[str, float] | None = None,
) -> list[SFTExample]:
    """Conversations of up to `turns` questions about one image, `repeats` draws per image.

    Each draw prefers one question per family so every conversation mixes skills. `graphs` (by
    image key) adds the dense grounding targets; without it (user data) the loss is text only.
    The first question's family is uniform over those the image has, or drawn in proportion to
    `family_weights` (a family left out weighs 1), which shifts how often each family is asked.
    """
    if records.empty:
        raise ValueError("world_examples: the record table is empty")
    if turns < 1 or repeats < 1:
        raise ValueError("world_examples: turns and repeats must be >= 1")
    weights = check_family_weights(family_weights)
    rng = np.random.default_rng(seed)
    out: list[SFTExample] = []
    for key, group in records.groupby(image_column, sort=True):
        rows = group.to_dict("records")
        image = load_image(images, key)
        dense = dense_targets(graphs[key]) if graphs is not None and key in graphs else None
        for _ in range(repeats):
            by_family: dict[str, dict[str, Any]] = {}
            for i in rng.permutation(len(rows)):
                by_family.setdefault(rows[i]["family"], rows[i])
            chosen = list(by_family.values())
            rng.shuffle(chosen)
            if weights is not None:
                w = np.array([weights.get(r["family"], 1.0) for r in chosen])
                first = int(rng.choice(len(chosen), p=w / w.sum()))
                chosen.insert(0, chosen.pop(first))
            conversation = tuple(
                (
                    make_prompt(r["question"], list(r["options"]), style, mode),
                    target_completion(r["answer"], r["answer_text"], list(r["options"]), mode),
                )
                for r in chosen[:turns]
            )
            # the image follows the first question, so its tokens can ground that one
            grounding = (
                question_targets(graphs[key], chosen[0]["spec"])
                if dense is not None and chosen[0].get("spec")
                else None
            )
            out.append(
                SFTExample(image=image, turns=conversation, dense=dense, grounding=grounding)
            )
    return out


def check_family_weights(
    family_weights: Mapping[str, float] | None, name: str = "family_weights"
) -> dict[str, float] | None:
    """`family_weights` as a dict, or a ValueError naming the unknown family or bad weight."""
    if family_weights is None:
        return None
    if not isinstance(family_weights, Mapping):
        raise ValueError(f"{name} must map question families to weights, got {family_weights!r}")
    out: dict[str, float] = {}
    for family, weight in family_weights.items():
        if family not in FAMILIES:
            raise ValueError(f"{name}: unknown family {family!r} (families: {', '.join(FAMILIES)})")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise ValueError(f"{name}.{family} must be a number > 0, got {weight!r}")
        out[family] = float(weight)
    return out or None


def graphs_from_table(scene_table: pd.DataFrame) -> dict[str, Scene]:
    return {
        sid: Scene.from_dict(json.loads(g))
        for sid, g in zip(scene_table["scene_id"], scene_table["graph"], strict=True)
    }
