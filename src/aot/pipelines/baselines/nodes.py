"""Baselines at AOT's compute: the same DAPO recipe for as many steps as all self-play rounds
together, on clean data (the paper's "Ablation (Clean Data)") or on statically implanted
procedural distractors without any Attacker learning (static augmentation)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from aot.defender import Defender
from aot.pipelines.selfplay.nodes import run_dapo

logger = logging.getLogger(__name__)


def _dapo(
    defender: Defender,
    table: pd.DataFrame,
    images: dict[str, Any],
    dapo: dict[str, Any],
    baselines: dict[str, Any],
    seed: int,
    name: str,
) -> tuple[Defender, pd.DataFrame]:
    steps = int(dapo.get("max_steps", 24)) * int(baselines.get("rounds", 3))
    logger.info("Baseline %s: DAPO for %d steps on %d rows", name, steps, len(table))
    params = {**dapo, "max_steps": steps, "seed": seed + 7919}
    if baselines.get("threads"):  # e.g. 1 each when the two baselines train side by side
        params["threads"] = int(baselines["threads"])
    return run_dapo(defender, table, images, params, f"baseline_{name}")


def train_clean_rl(
    defender: Defender,
    records: pd.DataFrame,
    images: dict[str, Any],
    dapo: dict[str, Any],
    baselines: dict[str, Any],
    seed: int,
) -> tuple[Defender, pd.DataFrame]:
    """DAPO on clean training records only."""
    train = records[records["split"] == "train"]
    n = min(len(train), int(baselines.get("max_records", 600)))
    table = train.sample(n=n, random_state=seed).reset_index(drop=True)
    return _dapo(defender, table, images, dapo, baselines, seed, "clean_rl")


def train_static_aug(
    defender: Defender,
    candidates: pd.DataFrame,
    implanted_images: dict[str, Any],
    records: pd.DataFrame,
    images: dict[str, Any],
    dapo: dict[str, Any],
    baselines: dict[str, Any],
    seed: int,
) -> tuple[Defender, pd.DataFrame]:
    """DAPO on procedural distractors implanted next to the targets (every proposal, not only
    the ones that fooled), mixed half and half with clean records as AOT's curriculum is."""
    n = int(baselines.get("max_records", 600))
    implanted = candidates[candidates["split"] == "train"]
    implanted = implanted.sample(n=min(len(implanted), n // 2), random_state=seed)
    implanted = implanted.assign(image=implanted["edited_image"])
    clean = records[records["split"] == "train"]
    clean = clean.sample(n=min(len(clean), n - len(implanted)), random_state=seed)
    table = pd.concat([implanted[clean.columns.intersection(implanted.columns)], clean])
    table = table.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return _dapo(
        defender, table, {**images, **implanted_images}, dapo, baselines, seed, "static_aug"
    )
