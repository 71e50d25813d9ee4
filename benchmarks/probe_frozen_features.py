"""How much of a warm-up step does the frozen vision tower cost? Cached features against none.

Run (after `dvc repro source_data base_defender`): `.venv/bin/python
benchmarks/probe_frozen_features.py [--batches 8] [--rounds 8]`. Takes the `base` env's base
Defender and pretraining conversations (`bench_pretrain_step.load_inputs`), freezes the vision
tower as the warm-up does (`sft.trainer.freeze_vision`), collates ``--batches`` batches of 16,
fills a feature cache on them, then times the model's forward and backward on the same batches
with the features from the cache (`aot.defender.image_cache.cached_image_features`, as
`train_defender_on_table` now does) and without, alternating which goes first in each of
``--rounds`` rounds, on 1 and on 2 threads. Prints the median seconds per batch of each.
Whole warm-up runs were too noisy to show the difference (results/warm_up_features.md).
Nothing is written.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from aot.defender.image_cache import cached_image_features
from aot.defender.sft import DenseCollator, _dataset, _image_tokens
from bench_pretrain_step import load_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    defender, examples, _ = load_inputs()
    random.seed(0)
    tokens = _image_tokens(defender, examples[0].image)
    collator = DenseCollator(processor=defender.processor, assistant_only_loss=True)
    model = defender.model.train()
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    batches = []
    for _ in range(args.batches):
        batch = collator([dict(r) for r in _dataset(random.sample(examples, 16), tokens)])
        batch.pop("dense_targets")
        batch.pop("grounding_targets")
        batches.append(batch)
    cache: dict = {}
    with cached_image_features(model, cache):
        for batch in batches:
            model(**batch)

    def seconds_per_batch(cached: bool) -> float:
        start = time.perf_counter()
        for batch in batches:
            model.zero_grad()
            if cached:
                with cached_image_features(model, cache):
                    loss = model(**batch).loss
            else:
                loss = model(**batch).loss
            loss.backward()
        return (time.perf_counter() - start) / len(batches)

    for threads in (1, 2):
        torch.set_num_threads(threads)
        times: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.rounds):
            for cached in (True, False) if r % 2 else (False, True):
                times[cached].append(seconds_per_batch(cached))
        print(
            f"{threads} thread(s): forward + backward per batch of 16, median over "
            f"{args.rounds} rounds: cached features {statistics.median(times[True]):.4f} s, "
            f"the tower run {statistics.median(times[False]):.4f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
