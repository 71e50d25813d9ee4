"""Defender DAPO speed: rollout throughput inside the trainer against raw `generate`, steps/s, memory.

Run: `.venv/bin/python benchmarks/bench_dapo.py [--steps 6] [--threads 1]`.
The Defender is the default tiny one (`defender.tiny` in conf/base/parameters*.yml, random
weights), the images 168-px world scenes. Every rollout is forced to exactly `--tokens` new
tokens (`min_new_tokens`) on both sides, so tokens/s compare like for like. The reward is a coin
flip: a random-weight model never answers right, and the correct-first reward would make every
group uninformative (every step skipped); with coins every step is one full DAPO update.
Writes a Markdown report to stdout (through logging) and to benchmarks/results/dapo.md, keeping
the file's hand-written notes (`report_notes.write_report`).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import TrainerCallback

from aot.defender import TinyDefenderConfig, build_tiny_defender
from aot.defender.dapo import DefenderDAPOConfig, build_dapo_trainer, dapo_dataset
from aot.defender.examples import load_image
from aot.pipelines.bootstrap_dataset.defender_nodes import defender_corpus
from aot.pipelines.bootstrap_dataset.nodes import generate_source_scenes
from aot.rewards import make_prompt
from report_notes import write_report

logger = logging.getLogger("bench_dapo")
ROOT = Path(__file__).resolve().parents[1]
WORLD = {"image_size": 168, "min_objects": 2, "max_objects": 5}


class _Coin:
    __name__ = "coin"

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, completions: list[Any], **_: Any) -> list[float]:
        return self.rng.integers(0, 2, len(completions)).astype(float).tolist()


class _StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self.ends.append(time.perf_counter())


def _timed(owner: Any, name: str, log: list[tuple[float, int]], count: Any) -> None:
    """Wraps owner.<name>, appending (seconds, generated tokens) for every call."""
    inner = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        log.append((time.perf_counter() - start, count(out)))
        return out

    setattr(owner, name, wrapper)


def base_parameters() -> dict[str, Any]:
    """conf/base's parameters, every parameters*.yml merged."""
    params: dict[str, Any] = {}
    for path in sorted((ROOT / "conf" / "base").glob("parameters*.yml")):
        params |= yaml.safe_load(path.read_text()) or {}
    return params


def benchmark_dapo_config(args: argparse.Namespace) -> DefenderDAPOConfig:
    """DAPO as the benchmarks run it: one rollout batch a step (the coin makes it informative),
    every rollout forced to exactly ``args.tokens`` new tokens, no checkpoints."""
    return DefenderDAPOConfig(
        num_generations=args.generations,
        groups_per_step=args.groups,
        max_new_tokens=args.tokens,
        max_steps=args.steps,
        max_tries=1,
        learning_rate=1e-4,
        save_steps=10_000,
        threads=args.threads,
        extra={"generation_kwargs": {"min_new_tokens": args.tokens}},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6, help="DAPO steps (the first is warm-up)")
    parser.add_argument("--groups", type=int, default=8, help="groups_per_step")
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per rollout")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("aot", "transformers", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    tiny = TinyDefenderConfig.from_dict(base_parameters()["defender"]["tiny"])
    defender = build_tiny_defender(tiny, defender_corpus({"image_size": 112}), seed=0)
    _, records, images = generate_source_scenes(WORLD, {"n_scenes": 40}, seed=0)
    config = benchmark_dapo_config(args)
    dataset = dapo_dataset(records, images, answer_mode=config.answer_mode)
    batch = args.groups * args.generations

    with tempfile.TemporaryDirectory() as tmp:
        clock = _StepClock()
        trainer = build_dapo_trainer(
            defender, dataset, config, tmp, reward_funcs=[_Coin(0)], callbacks=[clock]
        )
        rollouts: list[tuple[float, int]] = []
        generation: list[tuple[float, int]] = []
        _timed(trainer, "_generate", rollouts, lambda out: sum(len(c) for c in out[1]))
        _timed(trainer, "_generate_single_turn", generation, lambda out: sum(map(len, out[0])))
        scoring: list[tuple[float, int]] = []
        stepping: list[tuple[float, int]] = []
        _timed(trainer, "_generate_and_score_completions", scoring, lambda out: 0)
        _timed(trainer, "training_step", stepping, lambda out: 0)
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    # steady state: drop the first step (warm-up)
    step_s = float(np.mean(np.diff(clock.ends)))
    trainer_rollout = sum(t for t, _ in rollouts[1:]), sum(n for _, n in rollouts[1:])
    trainer_generate = sum(t for t, _ in generation[1:]), sum(n for _, n in generation[1:])
    rollout_s = float(np.mean([t for t, _ in rollouts[1:]]))
    scoring_s = float(np.mean([t for t, _ in scoring[1:]]))
    training_step_s = float(np.mean([t for t, _ in stepping[1:]]))

    # raw batched generate: the same model, the same rows (each prompt repeated G times, as the
    # trainer batches them), the same sampling and lengths; processor time included
    model, processor = defender.model.eval(), defender.processor
    rows = records.head(args.groups).to_dict("records")
    pics = [load_image(images, r["image"]) for r in rows]
    texts = [
        defender.chat_text(make_prompt(r["question"], list(r["options"]), "protocol", "word"))
        for r in rows
    ]
    sampling = dict(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, use_cache=True,
        max_new_tokens=args.tokens, min_new_tokens=args.tokens,
    )  # fmt: skip

    def raw(repeat_rows: bool) -> float:
        g = args.generations
        batch_pics = [p for p in pics for _ in range(g)] if repeat_rows else pics
        batch_texts = [t for t in texts for _ in range(g)] if repeat_rows else texts
        start = time.perf_counter()
        with torch.inference_mode():
            inputs = processor(
                images=batch_pics, text=batch_texts, padding=True, return_tensors="pt"
            )
            out = model.generate(**inputs, **sampling, num_return_sequences=1 if repeat_rows else g)
        assert out.shape == (batch, inputs["input_ids"].shape[1] + args.tokens)
        return time.perf_counter() - start

    raw(True)  # warm-up
    raw_rows = float(np.median([raw(True) for _ in range(3)]))
    raw_nrs = float(np.median([raw(False) for _ in range(3)]))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    tokens = batch * args.tokens
    tok_s_trainer = trainer_rollout[1] / trainer_rollout[0]
    tok_s_trainer_gen = trainer_generate[1] / trainer_generate[0]
    tok_s_raw = tokens / raw_rows
    lines = [
        "# Defender DAPO benchmark",
        "",
        f"Tiny Defender (`defender.tiny`: {defender.num_parameters():,} parameters), 168-px world "
        f"images ({int(processor.image_processor(images=pics[:1])['image_grid_thw'].prod()) // 4} "
        f"image tokens), {args.groups} groups x {args.generations} rollouts = {batch} rollouts of "
        f"exactly {args.tokens} tokens a step, CPU, {args.threads} thread(s), "
        f"{args.steps} steps (the first dropped as warm-up). Load average during the run: "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other jobs share this machine, so "
        "ratios move by about 0.1 between runs).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| rollout inside the trainer (`_generate`: chat template, image processing, generate, decode) | {tok_s_trainer:.0f} tokens/s |",
        f"| of which `generate` itself (`_generate_single_turn`) | {tok_s_trainer_gen:.0f} tokens/s |",
        f"| raw `model.generate`, same {batch} rows (processor included) | {tok_s_raw:.0f} tokens/s |",
        f"| **ratio trainer / raw** | **{tok_s_trainer / tok_s_raw:.2f}** |",
        f"| raw `generate` with `num_return_sequences={args.generations}` ({args.groups} prompts, each image encoded once) | {tokens / raw_nrs:.0f} tokens/s |",
        f"| training step (rollouts + reward + loss + backward + AdamW) | {1 / step_s:.2f} steps/s ({step_s * 1000:.0f} ms) |",
        f"| - rollouts (`_generate`) | {rollout_s * 1000:.0f} ms ({rollout_s / step_s:.0%}) |",
        f"| - rest of rollout + scoring (TRL re-processes the images for the loss, rewards, advantages, merging) | {(scoring_s - rollout_s) * 1000:.0f} ms |",
        f"| - loss forward + backward | {(training_step_s - scoring_s) * 1000:.0f} ms |",
        f"| - optimizer, clipping, logging | {(step_s - training_step_s) * 1000:.0f} ms |",
        f"| whole `train()` incl. warm-up | {total:.1f} s |",
        f"| peak memory (maxrss, whole process) | {rss_mb:.0f} MB |",
        "",
        "Reproduce: `.venv/bin/python benchmarks/bench_dapo.py "
        f"--steps {args.steps} --threads {args.threads}`.",
    ]
    report = "\n".join(lines)
    logger.info(report)
    write_report(ROOT / "benchmarks" / "results" / "dapo.md", report)


if __name__ == "__main__":
    main()
