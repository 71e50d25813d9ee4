"""Nodes of one self-play round: Attacker Flow-GRPO, curriculum, Defender DAPO, round metrics."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from aot.attacker import BoxEditPipeline, with_planner
from aot.attacker.flow_grpo import train_attacker_flow_grpo
from aot.defender import Defender
from aot.defender.dapo import train_defender_dapo
from aot.defender.examples import load_image
from aot.selfplay import CurriculumConfig, attack_records, curate
from aot.selfplay.metrics import attack_outcomes, by_family, fingerprint, greedy_correct

logger = logging.getLogger(__name__)


def round_seed(seed: int, round_name: str) -> int:
    """A different, reproducible seed for each round (``round_3`` -> seed + 3 * 1009)."""
    digits = "".join(ch for ch in round_name if ch.isdigit())
    return seed + 1009 * int(digits or 0)


def _split(records: pd.DataFrame, split: str, limit: int | None, seed: int) -> pd.DataFrame:
    subset = records[records["split"] == split]
    if subset.empty:
        raise ValueError(f"selfplay: no records in split '{split}'")
    if limit is not None and len(subset) > int(limit):
        subset = subset.sample(n=int(limit), random_state=seed).sort_index()
    return subset.reset_index(drop=True)


def train_attacker(
    attacker: BoxEditPipeline,
    defender: Defender,
    scenes: pd.DataFrame,
    records: pd.DataFrame,
    images: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    round_name: str = "round_1",
) -> tuple[BoxEditPipeline, pd.DataFrame]:
    """Flow-GRPO of the Attacker (editor + planner) against the frozen Defender, on training
    scenes; the log holds the reward parts and the edit-quality curve."""
    seed = round_seed(seed, round_name)
    train = _split(records, "train", params.get("max_records"), seed)
    flow = {k: v for k, v in params.items() if k not in ("max_records", "checkpoint_root")}
    root = Path(params.get("checkpoint_root", "data/06_models/selfplay_checkpoints"))
    checkpoints = root / round_name / "attacker"
    trained, log = train_attacker_flow_grpo(
        attacker, defender, train, images, flow, seed, scenes=scenes, checkpoint_dir=checkpoints
    )
    # Checkpoints exist only to resume an interrupted node; a finished one must not leak its
    # state into a later run with other parameters.
    shutil.rmtree(checkpoints, ignore_errors=True)
    return with_planner(trained), log  # a stock diffusers editor gets its planner saved beside it


def make_curriculum(
    attacker: BoxEditPipeline,
    defender: Defender,
    scenes: pd.DataFrame,
    records: pd.DataFrame,
    images: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    round_name: str = "round_1",
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, float]]:
    """The new Attacker edits held-in scenes; edits that keep the answer and fool the Defender
    are kept (hardest first) and mixed with replayed clean records."""
    config = CurriculumConfig.from_dict(params)
    seed = round_seed(seed, round_name)
    train = _split(records, "train", config.max_records, seed + 1)
    attacked, edited = attack_records(
        attacker,
        defender,
        train,
        images,
        scenes,
        edits_per_record=config.edits_per_record,
        sampling_steps=config.sampling_steps,
        noise_level=config.noise_level,
        k=config.k,
        batch_size=config.batch_size,
        seed=seed,
        prefix=round_name,
        reward=config.reward,
    )
    clean = records[records["split"] == "train"]
    curriculum, stats = curate(attacked, clean, config, seed)
    kept = set(curriculum["image"])
    logger.info(
        "%s curriculum: %d attacked (%.0f%% of %d edits pass and fool), %d replayed",
        round_name,
        int(stats["kept_attacks"]),
        100 * stats["kept_fraction"],
        int(stats["edits"]),
        int(stats["replayed"]),
    )
    return curriculum, {k: v for k, v in edited.items() if k in kept}, stats


def train_defender(
    defender: Defender,
    curriculum: pd.DataFrame,
    curriculum_images: dict[str, Any],
    images: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    round_name: str = "round_1",
) -> tuple[Defender, pd.DataFrame]:
    """DAPO on the curriculum. Checkpoints go to ``params.checkpoint_root/<round>``, so a round
    interrupted mid-training resumes from its last checkpoint."""
    params = {**params, "seed": params.get("seed", round_seed(seed, round_name))}
    merged = {**images, **curriculum_images}
    return run_dapo(defender, curriculum, merged, params, f"{round_name}/defender")


def run_dapo(
    defender: Defender,
    table: pd.DataFrame,
    images: dict[str, Any],
    params: dict[str, Any],
    name: str,
) -> tuple[Defender, pd.DataFrame]:
    """``train_defender_dapo`` as a node runs it: checkpoints under
    ``params.checkpoint_root/<name>`` while training, removed once it finished (see
    train_attacker); a small table still trains, with at most one group per prompt in a step."""
    dapo = {k: v for k, v in params.items() if k != "checkpoint_root"}
    dapo["groups_per_step"] = min(int(dapo.get("groups_per_step", 8)), len(table))
    root = Path(params.get("checkpoint_root", "data/06_models/selfplay_checkpoints"))
    trained, log = train_defender_dapo(defender, table, images, dapo, root / name)
    shutil.rmtree(root / name, ignore_errors=True)
    return trained, log


def evaluate_round(
    attacker: BoxEditPipeline,
    defender_before: Defender,
    defender_after: Defender,
    scenes: pd.DataFrame,
    records: pd.DataFrame,
    images: dict[str, Any],
    curriculum_stats: dict[str, float],
    attacker_log: pd.DataFrame,
    defender_log: pd.DataFrame,
    params: dict[str, Any],
    seed: int,
    round_name: str = "round_1",
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """On held-out (validation) scenes the round's Attacker edits once per record; both
    Defenders answer the clean and the edited image greedily. Returns the round metrics, the
    per-edit table and the edited images."""
    seed = round_seed(seed, round_name)
    held_out = _split(records, params.get("split", "val"), params.get("max_records"), seed)
    attacked, edited = attack_records(
        attacker,
        defender_before,
        held_out,
        images,
        scenes,
        edits_per_record=1,
        sampling_steps=int(params.get("sampling_steps", 6)),
        noise_level=float(params.get("noise_level", 0.7)),
        k=1,
        batch_size=int(params.get("batch_size", 32)),
        seed=seed + 7,
        prefix=f"{round_name}-eval",
        reward=params.get("reward"),
    )
    valid = attacked[(attacked["gate"] > 0) & (attacked["gt_ok"] > 0) & (attacked["valid"] > 0)]
    valid = valid.reset_index(drop=True)
    all_images = {**images, **edited}
    mode = params.get("answer_mode", "word")
    metrics: dict[str, Any] = {"round": round_name, "held_out_edits": len(attacked)}
    metrics["fingerprints"] = {
        "defender_in": fingerprint(defender_before),
        "defender_out": fingerprint(defender_after),
        "attacker_out": fingerprint(attacker),
    }
    metrics["integrity_pass_rate"] = float((attacked["gate"] > 0).mean())
    metrics["valid_edit_rate"] = len(valid) / max(len(attacked), 1)
    for tag, defender in (("before", defender_before), ("after", defender_after)):
        clean_ok = greedy_correct(defender, valid, all_images, "clean_image", mode=mode)
        edited_ok = greedy_correct(defender, valid, all_images, "image", mode=mode)
        valid[f"clean_ok_{tag}"] = clean_ok
        valid[f"edited_ok_{tag}"] = edited_ok
        metrics.update(attack_outcomes(clean_ok, edited_ok, f"{tag}_"))
        metrics[f"{tag}_robust_accuracy_by_family"] = by_family(valid, f"edited_ok_{tag}")
        metrics[f"{tag}_clean_accuracy_by_family"] = by_family(valid, f"clean_ok_{tag}")
    metrics["curriculum"] = curriculum_stats
    for kind in ("add", "remove", "replace"):
        metrics[f"edit_mix_{kind}"] = (
            float((valid["edit_kind"] == kind).mean()) if len(valid) else 0.0
        )
    metrics["attacker"] = _log_summary(attacker_log, ("reward_mean", "efficacy", "validity"))
    metrics["defender"] = _log_summary(
        defender_log, ("dapo/frac_filtered", "dapo/reward_mean", "dapo/tries")
    )
    logger.info(
        "%s: attack success %.2f -> %.2f, robust accuracy %.2f -> %.2f, clean %.2f -> %.2f",
        round_name,
        metrics["before_attack_success"],
        metrics["after_attack_success"],
        metrics["before_robust_accuracy"],
        metrics["after_robust_accuracy"],
        metrics["before_clean_accuracy"],
        metrics["after_clean_accuracy"],
    )
    return metrics, valid, edited


def _log_summary(log: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for column in columns:
        if column in log and log[column].notna().any():
            values = log[column].dropna()
            out[f"{column.replace('/', '_')}_first"] = float(values.iloc[0])
            out[f"{column.replace('/', '_')}_last"] = float(values.iloc[-1])
            out[f"{column.replace('/', '_')}_mean"] = float(values.mean())
    return out


def plot_round_gallery(
    attacks: pd.DataFrame, images: dict[str, Any], edited: dict[str, Any], n: int = 6
) -> Figure:
    """Clean | attacked pairs of the round's most effective held-out attacks, with the
    Defender's correctness before and after its update."""
    # Real successes first (right on clean, wrong when attacked), then the rest.
    ranked = attacks.assign(
        _fooled=attacks["clean_ok_before"] & ~attacks["edited_ok_before"],
        _clean=attacks["clean_ok_before"],
    )
    shown = ranked.sort_values(["_fooled", "_clean"], ascending=False).head(n)
    rows = max(len(shown), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(5.2, 2.7 * rows), squeeze=False)
    mark = {True: "right", False: "wrong"}
    for ax in axes.ravel():
        ax.axis("off")
    for i, row in enumerate(shown.to_dict("records")):
        axes[i, 0].imshow(np.asarray(load_image(images, row["clean_image"])))
        axes[i, 0].set_title(
            f"{row['question'][:38]}\nclean: before {mark[bool(row['clean_ok_before'])]}",
            fontsize=7,
        )
        axes[i, 1].imshow(np.asarray(load_image(edited, row["image"])))
        x0, y0, x1, y1 = row["edit_box"]
        axes[i, 1].add_patch(
            plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="magenta", lw=1)
        )
        axes[i, 1].set_title(
            f"{row['edit_prompt']} (answer {row['answer_text'] or row['answer']})\n"
            f"attacked: before {mark[bool(row['edited_ok_before'])]}, "
            f"after {mark[bool(row['edited_ok_after'])]}",
            fontsize=7,
        )
    if shown.empty:
        axes[0, 0].text(0.1, 0.5, "no valid held-out attack this round", fontsize=9)
    fig.tight_layout()
    return fig


ROUND_COLUMNS = (
    "before_attack_success",
    "after_attack_success",
    "before_robust_accuracy",
    "after_robust_accuracy",
    "before_clean_accuracy",
    "after_clean_accuracy",
    "integrity_pass_rate",
    "valid_edit_rate",
)


def summarize_rounds(*round_metrics: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    """One row per round (the curves DVC plots) and a figure of them."""
    rows = []
    for k, metrics in enumerate(round_metrics, start=1):
        row: dict[str, Any] = {"round": k}
        row.update({c: metrics.get(c) for c in ROUND_COLUMNS})
        row["kept_attacks"] = metrics.get("curriculum", {}).get("kept_attacks")
        row["frac_filtered"] = metrics.get("defender", {}).get("dapo_frac_filtered_mean")
        rows.append(row)
    table = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, (what, label) in zip(
        axes,
        (("attack_success", "Attacker success"), ("robust_accuracy", "Defender robust accuracy")),
        strict=True,
    ):
        ax.plot(table["round"], table[f"before_{what}"], "o-", label="before Defender update")
        ax.plot(table["round"], table[f"after_{what}"], "s-", label="after Defender update")
        ax.set_xlabel("round")
        ax.set_title(label)
        ax.set_xticks(list(table["round"]))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return table, fig
