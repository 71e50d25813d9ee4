"""A round's curriculum: the Attacker edits held-in scenes, the edits that keep the answer and
fool the current Defender are kept, and clean records are replayed so clean skills stay.

Plain functions over record tables and image mappings (no Kedro), reused by the round metrics:
`attack_records` draws the edits and scores them with the same reward parts Flow-GRPO trains on
(integrity gate, ground-truth guard, edit validity, the Defender's K answers).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from aot.attacker.attack_reward import DefenderAttackReward, clean_answers
from aot.attacker.flow_grpo import FlowGRPOTrainer
from aot.attacker.flow_grpo_config import FlowGRPOConfig
from aot.attacker.pipeline import BoxEditPipeline
from aot.attacker.rollout import build_items
from aot.config import reject_unknown
from aot.rewards.attack import AttackRewardConfig
from aot.world import Edit, apply_edit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurriculumConfig:
    """Kedro ``selfplay.curriculum.*``."""

    max_records: int = 300  # held-in records the Attacker edits
    edits_per_record: int = 2  # sampled edits per record (a Flow-GRPO group)
    sampling_steps: int = 6
    noise_level: float = 0.7
    k: int = 3  # Defender answers per edited image (temperature 1)
    min_wrong_rate: float = 0.34  # keep an edit when at least this share of the K answers fail
    replay_fraction: float = 0.5  # share of clean records in the mixed curriculum
    max_size: int | None = 400  # cap on attacked rows (hardest first)
    min_size: int = 64  # replayed clean rows fill the curriculum up to this size
    # Replayed rows restore each family's clean answer mix, then even out the families.
    balance_replay: bool = True
    batch_size: int = 32
    reward: dict[str, Any] = field(default_factory=dict)  # AttackRewardConfig overrides

    def __post_init__(self) -> None:
        for name in (
            "max_records",
            "edits_per_record",
            "sampling_steps",
            "k",
            "batch_size",
            "min_size",
        ):
            value, low = getattr(self, name), 0 if name == "min_size" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"selfplay.curriculum.{name} must be an int >= {low}, got {value!r}"
                )
        for name in ("min_wrong_rate", "replay_fraction"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"selfplay.curriculum.{name} must be in [0, 1], got {value!r}")
        if not isinstance(self.balance_replay, bool):
            raise ValueError(
                f"selfplay.curriculum.balance_replay must be true or false, got "
                f"{self.balance_replay!r}"
            )
        if self.replay_fraction == 1:
            raise ValueError("selfplay.curriculum.replay_fraction must be < 1")
        if not isinstance(self.noise_level, int | float) or self.noise_level <= 0:
            raise ValueError(
                f"selfplay.curriculum.noise_level must be > 0, got {self.noise_level!r}"
            )

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> CurriculumConfig:
        params = dict(params or {})
        reject_unknown("selfplay.curriculum", cls, params)
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def attack_records(
    pipe: BoxEditPipeline,
    defender: Any,
    records: pd.DataFrame,
    images: Mapping[str, Any],
    scenes: Mapping[str, Any] | pd.DataFrame,
    *,
    edits_per_record: int,
    sampling_steps: int,
    noise_level: float,
    k: int,
    batch_size: int,
    seed: int,
    prefix: str,
    reward: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, Image.Image]]:
    """Sample ``edits_per_record`` edits per record with the Attacker (planner + editor) and
    score each with the reward parts and the Defender's ``k`` answers at temperature 1.

    Returns one row per edit (every record column, plus ``image`` = the edited image's key,
    ``clean_image``, ``source_record_id``, ``edit_kind``, ``edit_box``, ``edit_prompt``,
    ``graph`` of the edited scene, ``gate``, ``gt_ok``, ``valid``, ``clean_ok``,
    ``wrong_rate``) and the edited images by key.
    """
    reward_cfg = AttackRewardConfig.from_dict({**dict(reward or {}), "k": k, "graded": True})
    planner = getattr(pipe, "planner", None)  # None: a stock diffusers pipeline without one
    config = FlowGRPOConfig(
        sampling_steps=sampling_steps,
        noise_level=noise_level,
        beta_kl=0.0,
        log_kl=False,
        reward=reward_cfg,
        planner=planner.config if planner is not None else FlowGRPOConfig().planner,
    )
    items = build_items(records, images, config.planner, scenes)
    if not items:
        raise ValueError(f"{prefix}: no record has a valid edit (check target boxes and graphs)")
    clean_answers(defender, items, reward_cfg, batch_size, seed)
    trainer = FlowGRPOTrainer(pipe, items, config, lambda r: {}, seed, planner)
    reward = DefenderAttackReward(defender, reward_cfg, batch_size)
    reward.seed = seed
    generator = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    edited_images: dict[str, Image.Image] = {}
    chunk = max(1, batch_size // edits_per_record)
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        rollout = trainer.rollout(part, edits_per_record, generator)
        scores = reward(rollout)
        for i, (item, plan, image) in enumerate(
            zip(rollout.items, rollout.plans, rollout.edited, strict=True)
        ):
            source = item.row
            key = f"{prefix}-{source['record_id']}-e{i % edits_per_record}"
            graph = None
            if item.scene is not None:
                try:
                    edit = Edit(plan.kind, tuple(plan.box), plan.shape, plan.colour)
                    graph = json.dumps(apply_edit(item.scene, edit).to_dict())
                except (ValueError, KeyError, TypeError):
                    graph = None
            wrong = scores["edited_wrong_rate"][i]
            rows.append(
                {
                    **source,
                    "record_id": key,
                    "image": key,
                    "clean_image": source["image"],
                    "source_record_id": source["record_id"],
                    "edit_kind": plan.kind,
                    "edit_box": [int(v) for v in plan.box],
                    "edit_prompt": plan.prompt(),
                    "graph": graph,
                    "gate": float(scores["gate"][i]),
                    "gt_ok": float(scores["gt_ok"][i]),
                    "valid": float(scores["valid"][i]),
                    "clean_ok": float(scores["clean_ok"][i]),
                    "imperceptible": float(scores["imperceptible"][i]),
                    "wrong_rate": float(wrong) if not math.isnan(wrong) else math.nan,
                }
            )
            edited_images[key] = Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB")
    return pd.DataFrame(rows), edited_images


def balanced_replay(hard: pd.DataFrame, clean: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` clean rows that restore each family's answer mix in the curriculum, then even out
    the families.

    Why: attacks that fool the Defender are lopsided (in the default run most fooled existence
    questions were "Yes" ones, and the clean table holds six existence questions per scene), so
    a uniform replay taught DAPO "Yes" (round 2: clean yes-ratio 0.87 -> 0.97). The answer mix
    to restore is the clean table's own, not a uniform one: most counts are 1, and a replay with
    every count equally often took round 2's count accuracy from 0.78 to 0.0. Each pick goes to
    the family whose answers are furthest (at least one row) above their clean shares, else to
    the family with the fewest rows; within it, to the answer furthest below its clean share;
    the row itself at random.
    """
    rng = np.random.default_rng(seed)
    pool = {
        key: list(rng.permutation(group.index.to_numpy()))
        for key, group in clean.groupby(["family", "answer_text"], sort=True)
    }
    share = {key: len(rows) / (clean["family"] == key[0]).sum() for key, rows in pool.items()}
    counts = dict.fromkeys(pool, 0)
    for key in zip(hard.get("family", []), hard.get("answer_text", []), strict=True):
        if key in counts:
            counts[key] += 1
    families = sorted({f for f, _ in pool})
    size = {f: sum(c for (g, _), c in counts.items() if g == f) for f in families}
    picked: list[Any] = []
    for _ in range(min(n, len(clean))):
        open_keys = [key for key in pool if pool[key]]
        if not open_keys:
            break
        # excess of the family's most over-represented answer over its clean share, in rows
        excess = {
            f: max(counts[key] - share[key] * size[f] for key in pool if key[0] == f)
            for f in families
        }
        candidates = [f for f in families if any(k[0] == f for k in open_keys)]
        skewed = [f for f in candidates if excess[f] >= 1]
        family = (
            max(skewed, key=lambda f: (excess[f], f))
            if skewed
            else min(candidates, key=lambda f: (size[f], f))
        )
        key = max(
            (k for k in open_keys if k[0] == family),
            key=lambda k: (share[k] * (size[family] + 1) - counts[k], k[1]),
        )
        picked.append(pool[key].pop())
        counts[key] += 1
        size[family] += 1
    return clean.loc[picked]


def curate(
    attacked: pd.DataFrame,
    clean: pd.DataFrame,
    config: CurriculumConfig,
    seed: int,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Keep edits that pass integrity, the guard and validity and that the Defender fails at
    least ``min_wrong_rate`` of the time (hardest first, at most ``max_size``), then mix in
    clean records so they make up ``replay_fraction`` of the result."""
    passed = attacked[(attacked["gate"] > 0) & (attacked["gt_ok"] > 0) & (attacked["valid"] > 0)]
    hard = passed[passed["clean_ok"] > 0]
    hard = hard[hard["wrong_rate"].fillna(0) >= config.min_wrong_rate]
    hard = hard.sort_values(["wrong_rate", "record_id"], ascending=[False, True])
    if config.max_size is not None:
        hard = hard.head(config.max_size)
    n_replay = round(len(hard) * config.replay_fraction / (1 - config.replay_fraction))
    # Too few fooling edits (or none): replayed clean data fills the batch DAPO needs.
    n_replay = min(max(n_replay, config.min_size - len(hard)), len(clean))
    if config.balance_replay and {"family", "answer_text"} <= set(clean.columns):
        replay = balanced_replay(hard, clean, n_replay, seed)
    else:
        replay = clean.sample(n=n_replay, random_state=seed) if n_replay else clean.head(0)
    mixed = pd.concat(
        [hard.assign(source="attack"), replay.assign(source="replay", clean_image=replay["image"])],
        ignore_index=True,
    )
    n = max(len(attacked), 1)
    stats = {
        "edits": float(len(attacked)),
        "integrity_pass_rate": float((attacked["gate"] > 0).mean()) if len(attacked) else math.nan,
        "guard_pass_rate": float((attacked["gt_ok"] > 0).mean()) if len(attacked) else math.nan,
        "validity_rate": float((attacked["valid"] > 0).mean()) if len(attacked) else math.nan,
        "kept_attacks": float(len(hard)),
        "kept_fraction": len(hard) / n,
        "replayed": float(len(replay)),
        "mean_wrong_rate_kept": float(hard["wrong_rate"].mean()) if len(hard) else math.nan,
    }
    for kind in ("add", "remove", "replace"):
        stats[f"edit_mix_{kind}"] = (
            float((attacked["edit_kind"] == kind).mean()) if len(attacked) else math.nan
        )
    if "imperceptible" in attacked:  # reported as its own edit type (aot.rewards.attack)
        subtle = attacked["imperceptible"] > 0
        stats["edit_mix_imperceptible"] = float(subtle.mean()) if len(attacked) else math.nan
        stats["kept_imperceptible"] = float((hard["imperceptible"] > 0).sum()) if len(hard) else 0.0
    return mixed.sample(frac=1.0, random_state=seed).reset_index(drop=True), stats
