"""Nodes of evaluation: per-family accuracy of a Defender on held-out clean scenes."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from aot.defender import Defender
from aot.defender.examples import load_image, make_prompt
from aot.metrics import accuracy_by_family
from aot.rewards import correct_first_reward

logger = logging.getLogger(__name__)


def answer_records(
    defender: Defender, records: pd.DataFrame, images: dict[str, Any], evaluation: dict[str, Any]
) -> pd.DataFrame:
    """Greedy answers of `defender` to the records of `evaluation.split`, scored by the protocol."""
    split = evaluation.get("split", "test")
    mode = evaluation.get("answer_mode", "letter")
    subset = records[records["split"] == split] if "split" in records else records
    if subset.empty:
        raise ValueError(f"evaluation: no records in split '{split}'")
    limit = evaluation.get("max_records")
    if limit:
        subset = subset.head(int(limit))
    style = evaluation.get("prompt_style", "protocol")
    prompts = [
        make_prompt(q, list(o), style, mode)
        for q, o in zip(subset["question"], subset["options"], strict=True)
    ]
    pictures = [load_image(images, key) for key in subset["image"]]
    answers = defender.generate(
        pictures,
        prompts,
        max_new_tokens=int(evaluation.get("max_new_tokens", 12)),
        batch_size=int(evaluation.get("batch_size", 32)),
        progress=True,
    )
    out = subset[["record_id", "scene_id", "family", "subtype", "answer", "answer_text"]].copy()
    out["response"] = [a[0] for a in answers]
    scores = [
        correct_first_reward(r, a, list(o), mode=mode, answer_text=t)
        for r, a, o, t in zip(
            out["response"], subset["answer"], subset["options"], subset["answer_text"], strict=True
        )
    ]
    out["extracted"] = [s.extracted for s in scores]
    out["reward"] = [s.overall for s in scores]
    out["correct"] = [s.accuracy > 0 for s in scores]
    return out.reset_index(drop=True)


def summarize_clean(predictions: pd.DataFrame) -> dict[str, Any]:
    """Accuracy per family and overall, and how often an answer could be parsed at all."""
    metrics = accuracy_by_family(predictions)
    logger.info("Clean accuracy: %s", {k: round(v, 3) for k, v in metrics["accuracy"].items()})
    return metrics
