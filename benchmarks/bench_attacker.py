"""Attacker cold-start quality vs wall time, and edit sampling speed, on this machine's CPU.

Run: `OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_attacker.py
[--threads 1 2] [--checkpoints 60 120 240] [--pairs 20000] [--eval-n 128] [--fresh]`.
Training state is saved in --state-dir, so rerunning the same command after the process was
killed continues where it stopped (rows already measured are kept).
The first entry of --threads runs to the longest checkpoint in --checkpoints; the others stop
at --short-budget seconds. Quality is measured on held-out procedural edits with the EMA weights
(8 Euler steps); the training clock excludes data generation and evaluation. Writes a Markdown
report to stdout (through logging) and to benchmarks/results/attacker.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aot.attacker import (
    AttackerConfig,
    BoxEditPipeline,
    ColdStartConfig,
    EditPairs,
    build_box_edit_pipeline,
    edit_quality,
    make_edit_pairs,
    train_cold_start,
)
from aot.attacker.cold_start import torch_threads
from aot.world import WorldConfig, sample_scene
from report_notes import write_report

logger = logging.getLogger("bench_attacker")
QUALITY_KEYS = ("mse_box", "mse_no_edit", "mse_ceiling", "colour_acc", "shape_acc", "remove_mse")


def make_pairs(n: int) -> tuple[EditPairs, float]:
    start = time.perf_counter()
    pairs = make_edit_pairs(np.random.default_rng(0), WorldConfig(), n)
    return pairs, time.perf_counter() - start


def train_curve(
    threads: int,
    checkpoints: list[float],
    pairs: EditPairs,
    eval_n: int,
    on_row: Callable[[dict[str, float]], None],
    state_path: Path | None = None,
) -> None:
    """One cold start, evaluated each time the training clock passes a checkpoint; each row
    is handed to ``on_row`` at once, so a run cut short still leaves its rows behind."""
    config = ColdStartConfig(steps=10**7, time_budget_s=max(checkpoints), threads=threads)

    def evaluate(seconds: float, step: int, pipe: BoxEditPipeline) -> None:
        with torch_threads(threads):
            q = edit_quality(pipe, n=eval_n, seed=999, steps=8)
        rate = step * config.batch_size / seconds
        row = {"threads": threads, "seconds": seconds, "steps": step, "samples_per_s": rate, **q}
        logger.info("threads %d, %4.0f s, step %d: %s", threads, seconds, step, q)
        on_row(row)

    pipe = build_box_edit_pipeline(AttackerConfig(), seed=0)
    train_cold_start(
        pipe,
        config,
        WorldConfig(),
        checkpoints_s=checkpoints,
        on_checkpoint=evaluate,
        procedural_pairs=pairs,
        state_path=state_path,
    )


def sampling_speed(threads: int, batch: int = 16, steps: int = 8, repeats: int = 5) -> float:
    """Edits/s through the pipeline (PIL in and out, crop, 8 Euler steps, paste back)."""
    pipe = build_box_edit_pipeline(AttackerConfig(), seed=0)
    rng = np.random.default_rng(0)
    images = [sample_scene(rng, WorldConfig(), f"s{i}").render() for i in range(batch)]
    boxes = [(10 + i, 20, 32 + i, 42) for i in range(batch)]
    with torch_threads(threads):
        pipe(images, boxes, "a red star", steps)  # warm-up
        start = time.perf_counter()
        for r in range(repeats):
            pipe(images, boxes, "a red star", steps, generator=torch.Generator().manual_seed(r))
    return batch * repeats / (time.perf_counter() - start)


def report(rows: list[dict[str, Any]], speeds: dict[str, float], pairs_s: float, n: int) -> str:
    header = "| threads | train s | steps | samples/s | " + " | ".join(QUALITY_KEYS) + " |"
    lines = [
        f"Attacker cold start, default AttackerConfig (0.69 M params), batch 64, lr 1e-3; "
        f"{os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.2f}.",
        f"Procedural pairs: {n} in {pairs_s:.1f} s ({n / pairs_s:.0f} pairs/s).",
        "",
        header,
        "|" + "---|" * (4 + len(QUALITY_KEYS)),
    ]
    for r in rows:
        cells = [f"{r['threads']}", f"{r['seconds']:.0f}", f"{r['steps']:.0f}"]
        cells += [f"{r['samples_per_s']:.0f}"] + [f"{r[k]:.4f}" for k in QUALITY_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| threads | edits/s (batch 16, 8 steps, PIL in/out) |", "|---|---|"]
    lines += [f"| {t} | {v:.1f} |" for t, v in speeds.items()]
    return "\n".join(lines) + "\n"


def _load(path: Path) -> dict[str, Any]:
    """Rows and speeds of an earlier, interrupted run of the same benchmark (or empty)."""
    if path.exists():
        return json.loads(path.read_text())
    return {"rows": [], "speeds": {}, "pairs_s": None}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--checkpoints", type=float, nargs="+", default=[60, 120, 240])
    parser.add_argument("--short-budget", type=float, default=240)
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--eval-n", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attacker.md"))
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/tmp/aot_bench_attacker"),
        help="resumable training state; rerun the same command to continue",
    )
    parser.add_argument("--fresh", action="store_true", help="discard any saved state first")
    args = parser.parse_args()
    if args.fresh:
        shutil.rmtree(args.state_dir, ignore_errors=True)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    saved_path = args.state_dir / "bench.json"
    saved = _load(saved_path)
    pairs, pairs_s = make_pairs(args.pairs)
    saved["pairs_s"] = saved["pairs_s"] or pairs_s
    saved["speeds"] = saved["speeds"] or {str(t): sampling_speed(t) for t in args.threads}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def add_row(row: dict[str, float]) -> None:
        rows = [
            r
            for r in saved["rows"]
            if (r["threads"], r["seconds"]) != (row["threads"], row["seconds"])
        ]
        saved["rows"] = sorted([*rows, row], key=lambda r: (r["threads"], r["seconds"]))
        saved_path.write_text(json.dumps(saved))
        write_report(args.out, report(saved["rows"], saved["speeds"], saved["pairs_s"], args.pairs))

    for i, threads in enumerate(args.threads):
        cps = sorted(args.checkpoints)
        if i > 0:
            cps = [c for c in cps if c <= args.short_budget]
        state = args.state_dir / f"threads{threads}.pt"
        train_curve(threads, cps, pairs, args.eval_n, add_row, state)
    logger.info("\n%s", args.out.read_text())


if __name__ == "__main__":
    main()
