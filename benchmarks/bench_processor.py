"""The Defender's processor on the evaluation's suite images: one call per batch against one
image at a time through `cached_preprocessing` (the path `Defender.generate` took before
2026-12-05 evening), and the patches both give.

Run (after `dvc repro evaluation`, which wrote the suite images): `.venv/bin/python
benchmarks/bench_processor.py [--passes 3] [--batch-size 32]`. Each batch is processed both ways
back to back, the order alternating from batch to batch, so slow drift of the machine falls on
both alike. Writes benchmarks/results/processor.md. Nothing under data/ changes.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from PIL import Image

from aot.defender import Defender
from aot.defender.image_cache import cached_preprocessing
from report_notes import write_report

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_processor")
DEFENDER = ROOT / "data/06_models/defender_sft"
EVALUATION = ROOT / "data/07_model_output/evaluation"
PROMPT = "Which shape is left of the red circle?\n(a) star\n(b) square\n(c) disc\n(d) ring"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/processor.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # the unseen manipulations' images and every Attacker's edits (attacked_images/<attacker>)
    found = [*EVALUATION.glob("suite_images/*.png"), *EVALUATION.glob("attacked_images/*/*.png")]
    files = sorted(found, key=lambda f: f.name)
    if not files or not DEFENDER.is_dir():
        raise SystemExit(f"needs {EVALUATION} and {DEFENDER}: run `dvc repro evaluation` first")
    defender = Defender.from_pretrained(DEFENDER)
    processor = defender.processor
    images = [Image.open(f).convert("RGB") for f in files]
    text = defender.chat_text(PROMPT)
    seconds = {"batched": 0.0, "per image": 0.0}
    differing = 0

    def process(way: str, batch: list[Image.Image]) -> dict:
        texts = [text] * len(batch)
        start = time.perf_counter()
        if way == "per image":
            with cached_preprocessing(processor.image_processor, {}):
                out = processor(images=batch, text=texts, padding=True, return_tensors="pt")
        else:
            out = processor(images=batch, text=texts, padding=True, return_tensors="pt")
        seconds[way] += time.perf_counter() - start
        return out

    for _ in range(args.passes):
        for index, start in enumerate(range(0, len(images), args.batch_size)):
            batch = images[start : start + args.batch_size]
            ways = ["batched", "per image"] if index % 2 else ["per image", "batched"]
            outs = {way: process(way, batch) for way in ways}
            a, b = outs["batched"], outs["per image"]
            same = all(torch.equal(a[k], b[k]) for k in ("pixel_values", "image_grid_thw"))
            differing += 0 if same else 1
    batches = args.passes * -(-len(images) // args.batch_size)
    rows = "\n".join(
        f"| {way} | {s:.2f} | {1000 * s / batches:.1f} |" for way, s in seconds.items()
    )
    report = (
        "# The Defender's processor on the evaluation's suite images\n\n"
        f"`benchmarks/bench_processor.py --passes {args.passes} --batch-size {args.batch_size}`: "
        f"{len(images)} images, {batches} batches, 2 cores, torch threads "
        f"{torch.get_num_threads()}. Batches whose patches differ between the two ways: "
        f"**{differing}**.\n\n"
        "| way | seconds in all | ms per batch |\n|---|---|---|\n"
        f"{rows}\n"
    )
    write_report(args.out, report)
    logger.info(report)


if __name__ == "__main__":
    main()
