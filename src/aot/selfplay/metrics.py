"""Round metrics: how often a frozen Attacker's edits fool a Defender, before and after the
Defender trains on them, and the Defender's accuracy on the clean and the attacked images."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from aot.defender.examples import load_image
from aot.rewards import correct_first_reward, make_prompt


def greedy_correct(
    defender: Any,
    table: pd.DataFrame,
    images: Mapping[str, Any],
    image_column: str,
    *,
    mode: str = "word",
    batch_size: int = 32,
    max_new_tokens: int = 12,
) -> np.ndarray:
    """Whether the Defender's greedy answer to each row, on ``row[image_column]``, is right."""
    if table.empty:
        return np.zeros(0, dtype=bool)
    prompts = [
        make_prompt(q, list(o), "protocol", mode)
        for q, o in zip(table["question"], table["options"], strict=True)
    ]
    pictures = [load_image(images, key) for key in table[image_column]]
    answers = defender.generate(
        pictures, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    return np.array(
        [
            correct_first_reward(a[0], ans, list(o), mode=mode, answer_text=t).accuracy > 0
            for a, ans, o, t in zip(
                answers, table["answer"], table["options"], table["answer_text"], strict=True
            )
        ],
        dtype=bool,
    )


def _rate(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def attack_outcomes(clean_ok: np.ndarray, edited_ok: np.ndarray, prefix: str) -> dict[str, float]:
    """Clean and robust (attacked) accuracy, and attack success among clean-correct rows."""
    success = ~edited_ok[clean_ok] if len(clean_ok) else np.zeros(0, dtype=bool)
    return {
        f"{prefix}clean_accuracy": _rate(clean_ok),
        f"{prefix}robust_accuracy": _rate(edited_ok),
        f"{prefix}attack_success": _rate(success),
    }


def by_family(table: pd.DataFrame, column: str) -> dict[str, float]:
    if table.empty:
        return {}
    return {str(f): float(v) for f, v in table.groupby("family")[column].mean().items()}


def fingerprint(model: Any) -> str:
    """A short hash of a model's weights (a Defender or a diffusers pipeline), so a round's
    metrics record exactly which checkpoint it started from and which it produced."""
    import hashlib

    import torch

    module = getattr(model, "model", None) or getattr(model, "unet", None) or model
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
