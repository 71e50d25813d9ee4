"""Nodes of bootstrap_dataset: source scenes and questions from the procedural world."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image
from tqdm.auto import tqdm

from aot.world import (
    QuestionConfig,
    WorldConfig,
    category_frequencies,
    make_questions,
    sample_scene,
    validate_records,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _split_names(n: int, fractions: dict[str, float], rng: np.random.Generator) -> list[str]:
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise ValueError(f"source.splits: unknown split(s) {unknown}; use {list(SPLITS)}")
    total = sum(fractions.values())
    if total <= 0 or any(v < 0 for v in fractions.values()):
        raise ValueError(
            f"source.splits: fractions must be non-negative and sum > 0, got {fractions}"
        )
    counts = {k: int(round(n * fractions.get(k, 0.0) / total)) for k in SPLITS}
    counts["train"] += n - sum(counts.values())
    names = [k for k in SPLITS for _ in range(counts[k])]
    rng.shuffle(names)
    return names


def generate_source_scenes(
    world: dict[str, Any], source: dict[str, Any], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Image.Image]]:
    """Samples `source.n_scenes` scenes and asks every question family about each.

    Splits are made by scene, so no scene's questions leak across train, val and test.
    Returns the scene table (one scene graph per row), the record table (the documented record
    schema plus `split`) and the rendered images keyed by scene id.
    """
    world_cfg = WorldConfig.from_dict(world)
    questions = {
        "colors": list(world_cfg.colors),
        "shapes": list(world_cfg.shapes),
        **source.get("questions", {}),
    }
    question_cfg = QuestionConfig.from_dict(questions)
    n_scenes = int(source["n_scenes"])
    if n_scenes <= 0:
        raise ValueError(f"source.n_scenes must be positive, got {n_scenes}")
    rng = np.random.default_rng(seed)
    scenes = [
        sample_scene(rng, world_cfg, f"scene_{i:05d}")
        for i in tqdm(range(n_scenes), desc="scenes", unit="scene")
    ]
    splits = _split_names(
        n_scenes, source.get("splits", {"train": 0.8, "val": 0.1, "test": 0.1}), rng
    )
    popular = category_frequencies(scenes)
    records: list[dict[str, Any]] = []
    images: dict[str, Image.Image] = {}
    for scene, split in zip(scenes, splits, strict=True):
        for record in make_questions(
            scene, rng, question_cfg, popular_categories=popular, seed=seed
        ):
            record["image"] = scene.scene_id
            record["split"] = split
            records.append(record)
        images[scene.scene_id] = scene.render()
    record_table = pd.DataFrame.from_records(records)
    validate_records(record_table, {s.scene_id: (s.width, s.height) for s in scenes})
    scene_table = pd.DataFrame(
        {
            "scene_id": [s.scene_id for s in scenes],
            "split": splits,
            "background": [f"{s.background.kind}:{s.background.name}" for s in scenes],
            "n_objects": [len(s.objects) for s in scenes],
            "graph": [json.dumps(s.to_dict()) for s in scenes],
        }
    )
    logger.info(
        "World: %d scenes (%s), %d records (%s)",
        n_scenes,
        scene_table["split"].value_counts().to_dict(),
        len(record_table),
        record_table["family"].value_counts().to_dict(),
    )
    return scene_table, record_table, images


def plot_world_gallery(records: pd.DataFrame, images: dict[str, Any], n: int = 8) -> Figure:
    """A grid of scenes, each with one of its questions and the ground-truth answer."""
    picked = records.drop_duplicates("scene_id").head(n)
    cols = 4
    rows = max(1, -(-len(picked) // cols))
    fig = Figure(figsize=(3.2 * cols, 3.6 * rows))
    for k, (_, rec) in enumerate(picked.iterrows()):
        ax = fig.add_subplot(rows, cols, k + 1)
        loaded = images[rec["image"]]
        ax.imshow(loaded() if callable(loaded) else loaded)
        for x0, y0, x1, y1 in rec["target_boxes"]:
            ax.add_patch(_rect(x0, y0, x1, y1))
        options = list(rec["options"])
        answer = rec["answer_text"] if not options else f"{rec['answer']}. {rec['answer_text']}"
        ax.set_title(f"[{rec['family']}] {rec['question']}\n→ {answer}", fontsize=7, wrap=True)
        ax.axis("off")
    fig.suptitle("Source scenes (target boxes in white)")
    fig.tight_layout()
    return fig


def _rect(x0: float, y0: float, x1: float, y1: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle(
        (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1.2
    )
