"""Nodes of sft: the Defender warm-up (TRL SFTTrainer) and the Attacker cold start."""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import numpy as np
import pandas as pd
import torch

from aot.attacker import (
    AttackerConfig,
    BoxEditPipeline,
    ColdStartConfig,
    box_mse,
    build_box_edit_pipeline,
    colour_match,
    edit_quality,
    pairs_from_records,
    train_cold_start,
)
from aot.bootstrap import effectiveness
from aot.defender import Defender
from aot.defender.examples import edited_graph, graphs_from_table, load_image, world_examples
from aot.defender.sft import DefenderSFTConfig, SFTExample, train_defender_sft
from aot.pipelines.evaluation.nodes import answer_records, summarize_clean
from aot.world import WorldConfig

logger = logging.getLogger(__name__)


def _pair_examples(
    pairs: pd.DataFrame,
    edited_images: dict[str, Any],
    scenes: pd.DataFrame,
    sft: dict[str, Any],
    seed: int,
) -> list[SFTExample]:
    """Conversations on the edited images of effective pairs: same question, same answer."""
    if pairs.empty:
        return []
    graphs = graphs_from_table(scenes)
    edited = {
        row["edited_image"]: g
        for row in pairs.to_dict("records")
        if row["scene_id"] in graphs
        and (g := edited_graph(graphs[row["scene_id"]], row)) is not None
    }
    return world_examples(
        pairs,
        edited_images,
        edited,
        image_column="edited_image",
        mode=sft.get("answer_mode", "word"),
        style="protocol",
        turns=1,
        repeats=int(sft.get("pair_repeats", 2)),
        seed=seed + 1,
    )


def warm_up_defender(
    defender: Defender,
    scenes: pd.DataFrame,
    records: pd.DataFrame,
    images: dict[str, Any],
    pairs: pd.DataFrame,
    edited_images: dict[str, Any],
    sft: dict[str, Any],
    seed: int,
) -> tuple[Defender, pd.DataFrame, dict[str, Any]]:
    """SFT on clean training records plus the effective AOT-SFT pairs, in the protocol's format.

    Returns the warmed-up Defender, the train/validation loss log and per-family accuracy on the
    validation split.
    """
    config = DefenderSFTConfig.from_dict(sft.get("trainer"), prefix="sft.defender.trainer")
    mode = sft.get("answer_mode", "word")
    graphs = graphs_from_table(scenes)
    train = records[records["split"] == "train"]
    clean = world_examples(
        train,
        images,
        graphs,
        mode=mode,
        style="protocol",
        turns=1,
        repeats=int(sft.get("clean_repeats", 2)),
        seed=seed,
    )
    adversarial = _pair_examples(pairs[pairs["split"] == "train"], edited_images, scenes, sft, seed)
    val = world_examples(
        records[records["split"] == "val"].head(int(sft.get("val_records", 128))),
        images,
        graphs,
        mode=mode,
        style="protocol",
        seed=seed,
    )
    logger.info(
        "Defender warm-up: %d clean + %d AOT-SFT conversations", len(clean), len(adversarial)
    )
    with tempfile.TemporaryDirectory(prefix="aot-sft-") as tmp:
        trained, log = train_defender_sft(
            defender, clean + adversarial, config, tmp, eval_examples=val
        )
    evaluation = {
        "split": "val",
        "answer_mode": mode,
        "max_per_family": sft.get("eval_per_family", 100),
        "batch_size": 64,
    }
    metrics = summarize_clean(answer_records(trained, records, images, evaluation))
    metrics["train_loss"] = _last(log, "loss")
    metrics["val_loss"] = _last(log, "eval_loss")
    metrics["n_clean_conversations"] = len(clean)
    metrics["n_aot_sft_conversations"] = len(adversarial)
    return trained, log, metrics


def _last(log: pd.DataFrame, column: str) -> float | None:
    if column not in log or log[column].dropna().empty:
        return None
    return float(log[column].dropna().iloc[-1])


def cold_start_attacker(
    pairs: pd.DataFrame,
    clean_images: dict[str, Any],
    edited_images: dict[str, Any],
    attacker: dict[str, Any],
    world: dict[str, Any],
    seed: int,
) -> tuple[BoxEditPipeline, pd.DataFrame]:
    """Flow-matching cold start of the box editor on procedural edits plus the effective pairs."""
    config = ColdStartConfig.from_dict({"seed": seed, **attacker.get("cold_start", {})})
    pipe = build_box_edit_pipeline(AttackerConfig.from_dict(attacker.get("model")), seed=seed)
    train = pairs[pairs["split"] == "train"]
    given = None
    if not train.empty:
        given = pairs_from_records(
            [load_image(clean_images, k) for k in train["image"]],
            [load_image(edited_images, k) for k in train["edited_image"]],
            list(train["distractor_box"]),
            list(train["distractor_prompt"]),
            crop_size=pipe.config.crop_size,
            crop_scale=pipe.config.crop_scale,
        )
    logger.info(
        "Attacker cold start on %d AOT-SFT pairs plus procedural edits",
        0 if given is None else len(given),
    )
    return train_cold_start(pipe, config, WorldConfig.from_dict(world), given)


def evaluate_cold_attacker(
    pipe: BoxEditPipeline,
    defender: Defender,
    candidates: pd.DataFrame,
    clean_images: dict[str, Any],
    edited_images: dict[str, Any],
    attacker: dict[str, Any],
    world: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """How close the cold-started Attacker comes to the filler, and how often it still fools.

    On held-out (test split) distractor proposals the Attacker paints the same prompt in the same
    box; its edit is compared with the filler's inside the box (masked error, colour check), and
    the base Defender answers it as in the effectiveness filter.
    """
    evaluation = attacker.get("evaluation", {})
    quality = edit_quality(
        pipe,
        n=int(evaluation.get("procedural_edits", 64)),
        world_cfg=WorldConfig.from_dict(world),
        seed=seed + 999,
    )
    test = (
        candidates[candidates["split"] == "test"]
        .head(int(evaluation.get("max_pairs", 128)))
        .reset_index(drop=True)
    )
    if test.empty:
        return {"procedural": quality, "n_pairs": 0}
    generator = torch.Generator().manual_seed(seed)
    clean = [load_image(clean_images, k) for k in test["image"]]
    boxes = [list(map(int, b)) for b in test["distractor_box"]]
    edits = pipe(
        clean,
        boxes,
        list(test["distractor_prompt"]),
        num_inference_steps=int(evaluation.get("steps", 8)),
        generator=generator,
    )
    keys = [f"attacker-{k}" for k in test["edited_image"]]
    attacked = dict(zip(keys, edits, strict=True))
    filler = [load_image(edited_images, k) for k in test["edited_image"]]
    masked = [box_mse(e, f, b) for e, f, b in zip(edits, filler, boxes, strict=True)]
    colours = [
        colour_match(e, c, b, col)
        for e, c, b, col in zip(edits, clean, boxes, test["distractor_color"], strict=True)
    ]
    effect = effectiveness(
        defender,
        clean_images,
        attacked,
        test.assign(edited_image=keys),
        k=int(evaluation.get("k", 3)),
        temperature=1.0,
        mode=evaluation.get("answer_mode", "word"),
        batch_size=32,
        seed=seed,
        max_new_tokens=12,
        prompt_style=evaluation.get("prompt_style", "protocol"),
    )
    return {
        "procedural": quality,
        "n_pairs": len(test),
        "masked_mse_vs_filler": float(np.mean(masked)),
        "colour_match": float(np.mean(colours)),
        "fool_rate": float(effect["effective"].mean()),
        "filler_fool_rate": float(test["effective"].mean()),
        "edited_accuracy": float(effect["edited_correct_rate"].mean()),
        "filler_edited_accuracy": float(test["edited_correct_rate"].mean()),
    }
