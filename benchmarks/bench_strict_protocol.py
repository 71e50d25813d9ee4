"""The strict protocol's sampled trials: one `generate` call per chunk with `n=trials` (what
`answer_table` does) against one call per trial on the rows still right (what it did before
2026-12-06), on the evaluation's own attacked suite rows and the warmed-up Defender.

Run (after `dvc repro evaluation`, which wrote the suites): `.venv/bin/python
benchmarks/bench_strict_protocol.py [--rows 320] [--repeats 2]`. The two ways alternate
(per trial, one call, per trial, one call, ...), so slow drift of the machine falls on both
alike; each repeat uses a fresh image-feature cache, as each of the evaluation's answer nodes
does. Writes benchmarks/results/strict_protocol.md. Nothing under data/ changes.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from aot.defender import Defender
from aot.defender.image_cache import BoundedCache
from aot.evaluation.protocols import DecodedImages, answer_table, ask, score_rows, table_prompts
from attacked_suite import load_attacked_suite
from report_notes import write_report

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_strict_protocol")


def trial_by_trial(
    defender: Defender, rows: pd.DataFrame, images: Any, trials: int, seed: int
) -> np.ndarray:
    """The former strict loop: trial t asks, with n=1, only the rows right in trials < t."""
    prompts, keys = table_prompts(rows, "word"), [str(k) for k in rows["image"]]
    correct, alive = np.ones(len(rows), dtype=bool), np.arange(len(rows))
    for trial in range(trials):
        answers = ask(
            defender,
            [keys[i] for i in alive],
            [prompts[i] for i in alive],
            images,
            temperature=1.0,
            batch_size=32,
            max_new_tokens=12,
            seed=seed,
            trial=trial,
        )
        _, ok = score_rows(rows.iloc[alive], [a[0] for a in answers], "word", None)
        ok = np.asarray(ok, dtype=bool)
        correct[alive[~ok]] = False
        alive = alive[ok]
    return correct


def one_call(
    defender: Defender, rows: pd.DataFrame, images: Any, trials: int, seed: int
) -> np.ndarray:
    out = answer_table(
        defender, rows, images, protocol="strict", trials=trials, temperature=1.0, seed=seed
    )
    return out["correct"].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/strict_protocol.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    defender, rows, files = load_attacked_suite(args.rows)
    loaders = {k: (lambda p=p: Image.open(p)) for k, p in files.items()}
    seconds: dict[str, list[float]] = {"per trial": [], "one call": []}
    accuracy: dict[str, list[float]] = {"per trial": [], "one call": []}
    for repeat in range(args.repeats):
        for way, run in (("per trial", trial_by_trial), ("one call", one_call)):
            cache = BoundedCache(1024 * 2**20)
            pictures = DecodedImages(loaders, cache)
            with defender.reusing_images(cache):
                start = time.perf_counter()
                correct = run(defender, rows, pictures, args.trials, seed=repeat)
                seconds[way].append(time.perf_counter() - start)
            accuracy[way].append(float(correct.mean()))
            logger.info("repeat %d, %s: %.2f s", repeat, way, seconds[way][-1])
    lines = [
        "# The strict protocol's sampled trials: one call against one per trial",
        "",
        f"`benchmarks/bench_strict_protocol.py --rows {len(rows)} --repeats {args.repeats} "
        f"--trials {args.trials}`: the first {len(rows)} attacked suite rows, the warmed-up "
        f"Defender, batch 32, temperature 1, torch threads {torch.get_num_threads()}.",
        "",
        "| way | seconds per repeat | strict accuracy per repeat |",
        "|---|---|---|",
    ]
    for way in seconds:
        secs = ", ".join(f"{s:.2f}" for s in seconds[way])
        accs = ", ".join(f"{a:.3f}" for a in accuracy[way])
        lines.append(f"| {way} | {secs} | {accs} |")
    ratio = sum(seconds["one call"]) / sum(seconds["per trial"])
    lines += ["", f"One call takes {ratio:.2f} of the per-trial time in all."]
    write_report(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
