"""Nodes of bootstrap_dataset, stage 2: distractor implantation and the effectiveness filter."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from aot.bootstrap import (
    build_pairs,
    effectiveness,
    implant_candidates,
    make_filler,
    plot_pair_gallery,
    propose_for_records,
    scenes_from_table,
    summarize_pairs,
)
from aot.defender import Defender

logger = logging.getLogger(__name__)


def propose_distractors(
    scenes: pd.DataFrame,
    records: pd.DataFrame,
    implant: dict[str, Any],
    world: dict[str, Any],
    seed: int,
) -> pd.DataFrame:
    """Distractor proposals (box + prompt) that never touch a target and never change an answer."""
    graphs = {s.scene_id: s for s in scenes_from_table(scenes)}
    limit = implant.get("max_records")
    if limit is not None and len(records) > int(limit):
        # The filter answers every candidate K times: cap the work, keeping the split proportions.
        records = records.sample(n=int(limit), random_state=seed).sort_index()
    candidates = propose_for_records(
        records,
        graphs,
        seed,
        n=int(implant.get("per_record", 2)),
        size_range=tuple(implant.get("size_range", (14, 30))),
        margin=int(implant.get("margin", 4)),
        hard_prob=float(implant.get("hard_prob", 0.8)),
        # Distractors have a placement grid of their own (0: anywhere); unset, the world's.
        grid=int(implant.get("grid", world.get("grid", 0))),
    )
    if candidates.empty:
        raise ValueError("distractor implantation: no valid proposal for any record")
    logger.info(
        "Proposed %d distractors for %d records", len(candidates), records["record_id"].nunique()
    )
    return candidates.reset_index(drop=True)


def implant_distractors(
    candidates: pd.DataFrame,
    images: dict[str, Any],
    implant: dict[str, Any],
    world: dict[str, Any],
    seed: int,
) -> dict[str, Image.Image]:
    """Fills each proposal's box with the chosen filler (procedural by default)."""
    filler = make_filler({"world": world, **implant.get("filler", {"kind": "procedural"})})
    return implant_candidates(candidates, images, filler, seed)


def filter_effective(
    defender: Defender,
    candidates: pd.DataFrame,
    clean_images: dict[str, Any],
    edited_images: dict[str, Any],
    filter_params: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Answers every clean and edited image K times with the base Defender; keeps the pairs whose
    clean image is answered right and whose edited one wrong (rates as parameters)."""
    effect = effectiveness(
        defender,
        clean_images,
        edited_images,
        candidates,
        k=int(filter_params.get("k", 3)),
        temperature=float(filter_params.get("temperature", 1.0)),
        mode=filter_params.get("answer_mode", "word"),
        batch_size=int(filter_params.get("batch_size", 32)),
        seed=seed,
        clean_min=float(filter_params.get("clean_min", 1.0)),
        edited_max=float(filter_params.get("edited_max", 0.0)),
        max_new_tokens=int(filter_params.get("max_new_tokens", 12)),
        prompt_style=filter_params.get("prompt_style", "protocol"),
    )
    scored = build_pairs(candidates, effect)
    pairs = scored[scored["effective"]].reset_index(drop=True)
    report = summarize_pairs(scored)
    report["n_effective"] = len(pairs)
    # Fragility: the same questions, answered on clean and on implanted images.
    report["clean_accuracy"] = float(scored["clean_correct_rate"].mean())
    report["implanted_accuracy"] = float(scored["edited_correct_rate"].mean())
    report["by_family_accuracy"] = {
        fam: {
            "clean": float(g["clean_correct_rate"].mean()),
            "implanted": float(g["edited_correct_rate"].mean()),
        }
        for fam, g in scored.groupby("family")
    }
    logger.info(
        "AOT-SFT: %d effective pairs of %d; base Defender accuracy clean %.3f vs implanted %.3f",
        len(pairs),
        len(scored),
        report["clean_accuracy"],
        report["implanted_accuracy"],
    )
    return scored, pairs, report


def plot_aot_sft_gallery(
    pairs: pd.DataFrame, clean_images: dict[str, Any], edited_images: dict[str, Any]
) -> Figure:
    """Clean | edited panels of effective pairs with the base Defender's answers."""
    shown = pairs.groupby("family", group_keys=False).head(2).head(8) if not pairs.empty else pairs
    return plot_pair_gallery(shown, clean_images, edited_images, n=max(1, len(shown)))
