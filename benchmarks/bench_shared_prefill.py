"""`Defender.generate` sampling n answers per prompt: each prompt encoded once and its cache
repeated (`aot.defender.shared_prefill`, the default) against transformers' plain
`num_return_sequences` (every prompt copied n times before the prefill), on the evaluation's
attacked suite rows and the warmed-up Defender.

Run (after `dvc repro evaluation`, which wrote the suites): `.venv/bin/python
benchmarks/bench_shared_prefill.py [--rows 256] [--n 3 5] [--repeats 2]`. The two ways alternate
per repeat, same seeds; answers are compared one by one. Writes
benchmarks/results/shared_prefill.md. Nothing under data/ changes.
"""

from __future__ import annotations

import argparse
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch
from PIL import Image

from aot.defender import Defender
from aot.rewards import build_prompt
from attacked_suite import load_attacked_suite
from report_notes import write_report

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_shared_prefill")


def answer(defender: Defender, images: list, prompts: list[str], n: int, shared: bool) -> list:
    """Every prompt answered n times at temperature 1, in batches of 32, seeded per batch."""
    out = []
    plain = mock.patch("aot.defender.model.can_share_prefill", return_value=False)
    with nullcontext() if shared else plain:
        for start in range(0, len(prompts), 32):
            out += defender.generate(
                images[start : start + 32],
                prompts[start : start + 32],
                n=n,
                temperature=1.0,
                max_new_tokens=12,
                batch_size=32,
                seed=start,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--n", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/shared_prefill.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    defender, rows, files = load_attacked_suite(args.rows)
    images = [Image.open(files[k]).convert("RGB") for k in rows["image"]]
    prompts = [
        build_prompt(q, list(o), mode="word")
        for q, o in zip(rows["question"], rows["options"], strict=True)
    ]
    lines = [
        "# Sampling n answers per prompt: shared prefill against `num_return_sequences`",
        "",
        f"`benchmarks/bench_shared_prefill.py --rows {len(rows)} --n {' '.join(map(str, args.n))} "
        f"--repeats {args.repeats}`: the first {len(rows)} attacked suite rows, the warmed-up "
        f"Defender, batch 32, temperature 1, 12 new tokens at most, torch threads "
        f"{torch.get_num_threads()}.",
        "",
        "| n | plain s per repeat | shared s per repeat | shared / plain | identical answers |",
        "|---|---|---|---|---|",
    ]
    for n in args.n:
        seconds: dict[bool, list[float]] = {False: [], True: []}
        answers: dict[bool, list] = {}
        for _ in range(args.repeats):
            for shared in (False, True):
                start = time.perf_counter()
                answers[shared] = answer(defender, images, prompts, n, shared)
                seconds[shared].append(time.perf_counter() - start)
                logger.info("n=%d shared=%s: %.2f s", n, shared, seconds[shared][-1])
        same = sum(
            a == b
            for pa, pb in zip(answers[False], answers[True], strict=True)
            for a, b in zip(pa, pb, strict=True)
        )
        ratio = sum(seconds[True]) / sum(seconds[False])
        lines.append(
            f"| {n} | {', '.join(f'{s:.2f}' for s in seconds[False])} | "
            f"{', '.join(f'{s:.2f}' for s in seconds[True])} | {ratio:.2f} | {same} of {n * len(rows)} |"
        )
    write_report(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
