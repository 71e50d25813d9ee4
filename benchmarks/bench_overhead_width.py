"""How the share of time outside the model changes with the Defender's width.

Run: `.venv/bin/python benchmarks/bench_overhead_width.py [--widths 1 2 4 8] [--steps 4]`.
`bench_overhead.py` finds DAPO (`train_defender`) the node with the largest share of its time
outside the models on the tiny default, almost all of it per-example work in TRL and
transformers (chat templates, the processor, rollout bookkeeping, `generate`'s Python loop).
That work does not depend on the model's size; the model's does. This benchmark measures both at several widths: the default
`defender.tiny` with `hidden_size`, `intermediate_size` and `vision_hidden_size` multiplied by
each factor (layers, heads and everything else as in conf/base), random weights, 168-px world
scenes, and times
- DAPO steps exactly as `bench_dapo.py` runs them (a coin-flip reward, so every step is a full
  update; every rollout forced to `--tokens` new tokens), the first step dropped as warm-up;
- `Defender.generate` answering `--answers` prompts greedily in batches of 16 (the evaluation's
  and the curriculum's path), after one warm-up batch.
Model time is what `bench_overhead.py` counts (the Qwen2.5-VL forward, its vision tower's
forward on its own, the forward TRL's fused LM head runs for the loss, `backward`, the
optimizer's `step`); the rest is outside. Writes
benchmarks/results/overhead_width.md, keeping its hand-written notes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from aot.defender import TinyDefenderConfig, build_tiny_defender
from aot.defender.dapo import build_dapo_trainer, dapo_dataset
from aot.defender.examples import load_image
from aot.pipelines.bootstrap_dataset.defender_nodes import defender_corpus
from aot.pipelines.bootstrap_dataset.nodes import generate_source_scenes
from aot.rewards import make_prompt
from bench_dapo import WORLD, _Coin, base_parameters, benchmark_dapo_config
from bench_overhead import Clock, instrument
from report_notes import write_report

logger = logging.getLogger("bench_overhead_width")
ROOT = Path(__file__).resolve().parents[1]
WIDENED = ("hidden_size", "intermediate_size", "vision_hidden_size")


class _StepMarks(TrainerCallback):
    """(wall, model seconds so far) at the end of every optimizer step."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.marks: list[tuple[float, float]] = []

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self.marks.append((time.perf_counter(), self.clock.total()))


def widened(base: TinyDefenderConfig, factor: int) -> TinyDefenderConfig:
    return dataclasses.replace(base, **{k: getattr(base, k) * factor for k in WIDENED})


def dapo_steps(defender: Any, records: Any, images: Any, clock: Clock, args: Any) -> tuple:
    """Steady-state (wall, model) seconds per DAPO step."""
    config = benchmark_dapo_config(args)
    dataset = dapo_dataset(records, images, answer_mode=config.answer_mode)
    marks = _StepMarks(clock)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_dapo_trainer(
            defender, dataset, config, tmp, reward_funcs=[_Coin(0)], callbacks=[marks]
        )
        trainer.train()
    walls, models = zip(*marks.marks, strict=True)
    return float(np.mean(np.diff(walls))), float(np.mean(np.diff(models)))


def answering(defender: Any, records: Any, images: Any, clock: Clock, n: int) -> tuple:
    """(wall, model) seconds for `Defender.generate` on ``n`` prompts, greedy, batches of 16."""
    rows = records.head(n).to_dict("records")
    pics = [load_image(images, r["image"]) for r in rows]
    prompts = [make_prompt(r["question"], list(r["options"]), "protocol", "word") for r in rows]
    defender.generate(pics[:16], prompts[:16], max_new_tokens=16)  # warm-up
    start, model = time.perf_counter(), clock.total()
    defender.generate(pics, prompts, max_new_tokens=16, batch_size=16)
    return time.perf_counter() - start, clock.total() - model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=4, help="DAPO steps (the first is warm-up)")
    parser.add_argument("--groups", type=int, default=8, help="groups_per_step")
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per rollout")
    parser.add_argument("--answers", type=int, default=96, help="prompts Defender.generate answers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/overhead_width.md")
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be at least 3 (one warm-up step, then two to difference)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("aot", "transformers", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    clock = Clock()
    instrument(clock)

    base = TinyDefenderConfig.from_dict(base_parameters()["defender"]["tiny"])
    _, records, images = generate_source_scenes(WORLD, {"n_scenes": 120}, seed=0)
    corpus = defender_corpus({"image_size": 112})
    rows = []
    for factor in args.widths:
        config = widened(base, factor)
        defender = build_tiny_defender(config, corpus, seed=0)
        step_wall, step_model = dapo_steps(defender, records, images, clock, args)
        answer_wall, answer_model = answering(defender, records, images, clock, args.answers)
        rows.append((factor, config, defender.num_parameters(), step_wall, step_model,
                     answer_wall, answer_model))  # fmt: skip
        logger.info(
            "width x%d: DAPO step %.2f s (%.0f%% outside), answering %.2f s (%.0f%% outside)",
            factor, step_wall, 100 * (1 - step_model / step_wall),
            answer_wall, 100 * (1 - answer_model / answer_wall),
        )  # fmt: skip
    lines = [
        "# Time outside the model against the Defender's width",
        "",
        f"`benchmarks/bench_overhead_width.py`: `defender.tiny` (conf/base) with "
        f"{', '.join(f'`{k}`' for k in WIDENED)} multiplied by the factor, random weights, "
        f"168-px scenes; {os.cpu_count()} cores, torch threads {args.threads}. DAPO: "
        f"{args.groups} groups x {args.generations} rollouts of exactly {args.tokens} tokens a "
        f"step, the mean of steps 2 to {args.steps}. Answering: `Defender.generate` on "
        f"{args.answers} prompts, greedy, at most 16 new tokens, batches of 16. Model time: the "
        "Qwen2.5-VL forward (its vision tower included, and the forward TRL's fused LM head runs "
        "for the loss), backward and the optimizer's step; outside: the rest. Load average at "
        f"the end: {os.getloadavg()[0]:.1f}.",
        "",
        "| width | hidden / MLP / vision | parameters | DAPO step s | model s | outside | "
        "answering s | model s | outside |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| x{f} | {c.hidden_size} / {c.intermediate_size} / {c.vision_hidden_size} | "
            f"{n / 1e6:.1f} M | {sw:.2f} | {sm:.2f} | **{1 - sm / sw:.0%}** | "
            f"{aw:.2f} | {am:.2f} | **{1 - am / aw:.0%}** |"
            for f, c, n, sw, sm, aw, am in rows
        ],
        "",
        "Reproduce: `.venv/bin/python benchmarks/bench_overhead_width.py --widths "
        f"{' '.join(map(str, args.widths))} --steps {args.steps} --threads {args.threads}`.",
    ]
    report = "\n".join(lines) + "\n"
    write_report(args.out, report)
    logger.info(report)


if __name__ == "__main__":
    main()
