"""Attacker Flow-GRPO on this machine's CPU: time per step, reward and edit-quality curves.

Run: `OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_flow_grpo.py
[--steps 30] [--variants full no_fidelity] [--timing-steps 2] [--quick]`.

1. Timing: ``--timing-steps`` RL steps at the default ``FlowGRPOConfig`` (4 prompts x G=8,
   10 SDE steps, KL reference), split into sampling, reward (frozen Defender, K=3) and update.
2. Curves: ``--steps`` RL steps per variant at a lighter setting (4 prompts x G=4, 6 SDE steps,
   half the recorded steps per update) so each variant takes a few minutes:
   ``full`` = validity gate + KL 0.05 (the default reward), ``no_fidelity`` = no validity gate,
   β 0 (the notes' reward-hacking setting), ``shuffled`` = full with rewards permuted inside
   the batch (a control: same update noise, no signal).
   Each row logs the on-policy reward parts; every ``--quality-every`` steps the held-out
   procedural edit quality (ODE, ``aot.attacker.edit_quality``) is measured next to it.

The Attacker is the cold-started ``data/06_models/attacker_cold`` and the Defender
``data/06_models/defender_sft`` (else ``defender_base``, else a random
``build_tiny_defender``: efficacy is then noise). Records are the source world's train split.
Writes Markdown to stdout (logging) and to benchmarks/results/flow_grpo.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from aot.attacker import AttackerConfig, BoxEditPipeline, build_box_edit_pipeline
from aot.attacker.flow_grpo import train_attacker_flow_grpo
from aot.attacker.rollout import Rollout
from report_notes import write_report

logger = logging.getLogger("bench_flow_grpo")

LIGHT = {
    "prompts_per_step": 4,
    "group_size": 4,
    "sampling_steps": 6,
    "train_step_fraction": 0.5,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_fidelity": {"beta_kl": 0.0, "reward": {"validity_mode": "off"}},
    "shuffled": {},
}
# The cold-started editor's shape accuracy is near chance (see attacker_metrics.json), so the
# validity gate checks colour only; shape accuracy is still reported.
REWARD = {"validity_checks": ["colour"]}
CURVE_COLUMNS = (
    "step", "reward_mean", "reward_ma5", "efficacy_queried", "edited_wrong_rate", "validity",
    "gate_pass", "gt_ok", "kl", "clip_frac", "frac_add", "frac_remove", "frac_replace",
    "quality_colour_acc", "quality_shape_acc", "quality_mse_box", "quality_remove_mse", "t_step",
)  # fmt: skip


def load_attacker(path: Path) -> tuple[BoxEditPipeline, str]:
    if (path / "model_index.json").exists():
        pipe = BoxEditPipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        return pipe, str(path)
    return build_box_edit_pipeline(AttackerConfig(), seed=0), "random AttackerConfig() (untrained)"


def load_defender(paths: list[Path]) -> tuple[Any, str]:
    from aot.defender import Defender, build_tiny_defender

    for path in paths:
        if (path / "config.json").exists():
            return Defender.from_pretrained(path), str(path)
    return build_tiny_defender(), "random build_tiny_defender() (efficacy is noise)"


def load_records(
    root: Path, split: str, n: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    records = pd.read_parquet(root / "records.parquet")
    scenes = pd.read_parquet(root / "scenes.parquet")
    records = records[records["split"] == split]
    records = records.sample(min(n, len(records)), random_state=seed).reset_index(drop=True)
    images = {
        k: (lambda k=k: Image.open(root / "images" / f"{k}.png")) for k in records["image"].unique()
    }
    return records, scenes, images


def shuffled(reward_fn: Any, seed: int) -> Any:
    rng = np.random.default_rng(seed)

    def fn(rollout: Rollout) -> dict[str, np.ndarray]:
        scores = reward_fn(rollout)
        scores["reward"] = rng.permutation(scores["reward"])
        return scores

    return fn


def run(
    name: str,
    params: dict[str, Any],
    args: argparse.Namespace,
    data: tuple,
    defender: Any,
) -> pd.DataFrame:
    records, scenes, images = data
    pipe, _ = load_attacker(args.attacker)
    reward_fn = None
    if name == "shuffled":
        from aot.attacker.attack_reward import DefenderAttackReward
        from aot.attacker.flow_grpo_config import FlowGRPOConfig

        cfg = FlowGRPOConfig.from_dict(params)
        reward_fn = shuffled(DefenderAttackReward(defender, cfg.reward), args.seed)
        # train_attacker_flow_grpo fills clean answers only for its own reward: do it here.
        from aot.attacker.attack_reward import clean_answers
        from aot.attacker.rollout import build_items

        items = build_items(records, images, cfg.planner, scenes, cfg.max_records)
        clean_answers(defender, items, cfg.reward, cfg.defender_batch_size, args.seed)
        keep = {it.prompt_key for it in items if _clean_ok(it, cfg)}
        records = records[records["record_id"].isin(keep)]
        reward_fn = _with_clean(reward_fn, items)

    def on_step(row: dict[str, float], _: Any) -> None:
        logger.info(
            "  %s step %d: reward %.3f, validity %.2f, efficacy(queried) %.3f, kl %.1e, %.1f s",
            name,
            row["step"],
            row["reward_mean"],
            row.get("validity", float("nan")),
            row.get("efficacy_queried", float("nan")),
            row.get("kl", float("nan")),
            row["t_step"],
        )

    start = time.perf_counter()
    _, log = train_attacker_flow_grpo(
        pipe, defender, records, images, params, args.seed, scenes=scenes, reward_fn=reward_fn,
        on_step=on_step,
    )  # fmt: skip
    log.attrs["wall_s"] = time.perf_counter() - start
    return log


def _clean_ok(item: Any, cfg: Any) -> bool:
    from aot.rewards.attack import correct_rate

    return (
        correct_rate(item.clean_answers, item.row, cfg.reward.answer_mode) >= cfg.reward.clean_min
    )


def _with_clean(reward_fn: Any, items: list) -> Any:
    """The trainer builds its own items; give them the clean answers computed here."""
    answers = {it.prompt_key: it.clean_answers for it in items}

    def fn(rollout: Rollout) -> dict[str, np.ndarray]:
        for it in rollout.items:
            it.clean_answers = answers[it.prompt_key]
        return reward_fn(rollout)

    return fn


def table(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[str]:
    cols = [c for c in columns if c in frame]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if c == "step":
                cells.append(str(int(v)))
            elif pd.isna(v):
                cells.append("")
            elif c == "kl":
                cells.append(f"{v:.1e}")
            else:
                cells.append(f"{v:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("aot.attacker.flow_grpo", "httpx", "transformers", "diffusers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--attacker", type=Path, default=Path("data/06_models/attacker_cold"))
    parser.add_argument(
        "--defender",
        type=Path,
        nargs="+",
        default=[Path("data/06_models/defender_sft"), Path("data/06_models/defender_base")],
    )
    parser.add_argument("--source", type=Path, default=Path("data/01_raw/source"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--timing-steps", type=int, default=2)
    parser.add_argument("--quality-every", type=int, default=5)
    parser.add_argument("--quality-edits", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=["full", "no_fidelity"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 steps per part (smoke)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/flow_grpo.md"))
    args = parser.parse_args()
    if args.quick:
        args.steps, args.timing_steps, args.records = 2, 1, 60
    torch.set_num_threads(args.threads)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")

    defender, defender_name = load_defender(args.defender)
    _, attacker_name = load_attacker(args.attacker)
    data = load_records(args.source, args.split, args.records, args.seed)
    common = {"threads": args.threads, "reward": dict(REWARD)}
    lines = [
        "# Attacker Flow-GRPO (aot.attacker.flow_grpo) on CPU",
        "",
        f"Attacker: `{attacker_name}`; Defender: `{defender_name}`; "
        f"{len(data[0])} `{args.split}` records of `{args.source}`; torch threads {args.threads}, "
        f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}. "
        "Reward validity checks: colour only (the cold-started editor's shape accuracy is near "
        "chance).",
        "",
    ]

    logger.info("timing: %d steps at the default FlowGRPOConfig", args.timing_steps)
    timing = run(
        "default",
        {**common, "steps": args.timing_steps, "quality_every": 0},
        args,
        data,
        defender,
    )
    t = timing[["t_sample", "t_reward", "t_update", "t_step"]].median()
    lines += [
        "## Time per Flow-GRPO step at the default config",
        "",
        "4 prompts x G=8 = 32 edits, 10 SDE steps (noise 0.7, 9 recorded), KL reference, "
        "2 minibatches over all 9 recorded steps; replace edits take a second (remove, add) pass.",
        "",
        "| sampling s | reward s (Defender K=3) | update s | step s | steps |",
        "|---|---|---|---|---|",
        f"| {t.t_sample:.1f} | {t.t_reward:.1f} | {t.t_update:.1f} | {t.t_step:.1f} | "
        f"{len(timing)} |",
        "",
    ]

    logs: dict[str, pd.DataFrame] = {}
    for name in args.variants:
        params = {
            **common,
            **LIGHT,
            **{k: v for k, v in VARIANTS[name].items() if k != "reward"},
            "steps": args.steps,
            "quality_every": args.quality_every,
            "quality_edits": args.quality_edits,
            "reward": {**REWARD, **VARIANTS[name].get("reward", {})},
        }
        logger.info("variant %s: %d steps", name, args.steps)
        log = run(name, params, args, data, defender)
        log["reward_ma5"] = log["reward_mean"].rolling(5, min_periods=1).mean()
        logs[name] = log

    lines += [
        "## Curves (4 prompts x G=4, 6 SDE steps, half the recorded steps per update)",
        "",
        "On-policy batch means per step (16 edits; `reward_ma5` is a 5-step moving average); "
        "`quality_*` is the held-out procedural edit quality of the editor at that step "
        f"({args.quality_edits} edits, 6-step ODE, fixed noise), step 0 before any update.",
        "",
    ]
    summary = ["| variant | wall s | s/step | reward first 5 | reward last 5 | colour acc 0 -> end "
               "| shape acc 0 -> end | mse_box 0 -> end | kl end |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, log in logs.items():
        steps = log[log["step"] > 0]
        q = log.dropna(subset=["quality_colour_acc"])
        summary.append(
            f"| {name} | {log.attrs['wall_s']:.0f} | {steps['t_step'].mean():.1f} | "
            f"{steps['reward_mean'].head(5).mean():.3f} | {steps['reward_mean'].tail(5).mean():.3f} | "
            f"{q['quality_colour_acc'].iloc[0]:.2f} -> {q['quality_colour_acc'].iloc[-1]:.2f} | "
            f"{q['quality_shape_acc'].iloc[0]:.2f} -> {q['quality_shape_acc'].iloc[-1]:.2f} | "
            f"{q['quality_mse_box'].iloc[0]:.4f} -> {q['quality_mse_box'].iloc[-1]:.4f} | "
            f"{steps['kl'].iloc[-1]:.1e} |"
        )
    lines += summary + [""]
    for name, log in logs.items():
        lines += [f"### {name}", ""] + table(log, CURVE_COLUMNS) + [""]
    text = "\n".join(lines)
    logger.info("\n%s", text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_report(args.out, text)


if __name__ == "__main__":
    main()
