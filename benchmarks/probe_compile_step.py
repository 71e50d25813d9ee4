"""Does `torch.compile` speed up the base Defender's pretraining step? Eager against compiled.

Run (after `dvc repro source_data`): `.venv/bin/python benchmarks/probe_compile_step.py`. Builds
6 collated batches of 32 of the `pretrain_defender` node's conversations (the `base` env's
catalog, as `bench_pretrain_step.py` does), then times the initial Defender's forward and
backward on them: eager twice, `torch.compile(model)` three times (the first round includes
compiling), eager twice again. Prints seconds per batch and the first batch's loss (the same
model, so the losses must agree); nothing is written (results: `results/pretrain_step.md`).
"""

import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from bench_pretrain_step import load_inputs, model_batch


def run(m: Any, batches: list, label: str, rounds: int = 2) -> None:
    for r in range(rounds):
        t = time.perf_counter()
        losses = []
        for batch in batches:
            m.zero_grad()
            loss = m(**batch).loss
            loss.backward()
            losses.append(float(loss))
        dt = (time.perf_counter() - t) / len(batches)
        print(f"{label} round {r}: {dt:.3f} s per batch, loss[0] {losses[0]:.6f}", flush=True)


def main() -> None:
    torch.set_num_threads(2)
    defender, examples, _ = load_inputs()
    random.seed(0)
    batches = [model_batch(defender, random.sample(examples, 32)) for _ in range(6)]
    print("lengths", [b["input_ids"].shape[1] for b in batches], flush=True)
    model = defender.model.train()

    run(model, batches, "eager")
    t = time.perf_counter()
    compiled = torch.compile(model)
    run(compiled, batches, "compiled", rounds=3)
    print("compiled total incl. compile", time.perf_counter() - t)
    run(model, batches, "eager again")


if __name__ == "__main__":
    main()
