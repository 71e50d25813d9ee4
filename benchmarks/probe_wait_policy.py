"""How long torch's OpenMP threads spin before they sleep, and what that does to a training step.

Run (after `dvc repro source_data`, which made the scenes): `.venv/bin/python
benchmarks/probe_wait_policy.py [--rounds 3] [--busy]`. Each setting runs in its own process
(libgomp reads the variables once, when torch loads it), in turn, `--rounds` times:

- `PASSIVE`: `OMP_WAIT_POLICY=PASSIVE`, what the Makefile exports (a waiting thread sleeps at once);
- `default`: neither variable set (libgomp spins 300,000 times, then sleeps);
- `ACTIVE`: `OMP_WAIT_POLICY=ACTIVE` (spins, in effect, for ever);
- `PASSIVE + GOMP_SPINCOUNT=300000`: what dvc.yaml's one-process stages set (libgomp takes
  GOMP_SPINCOUNT over OMP_WAIT_POLICY).

Each process builds 10 pretraining batches of 32 (`bench_pretrain_step.load_inputs`, the `base`
catalog), warms up on 3, then times 3 passes of AdamW steps (forward, backward, step) over the
10 on 2 threads and prints seconds per step. `--busy` runs a spinning Python process beside them
the whole time: one core taken by other work. Nothing is written.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS: dict[str, dict[str, str | None]] = {
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None},
    "default": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": None},
    "PASSIVE + GOMP_SPINCOUNT=300000": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "300000"},
}


def time_steps() -> list[float]:
    """Seconds per optimizer step, three passes over 10 batches (run in the child process)."""
    import logging

    import torch

    sys.path.insert(0, str(HERE))
    from bench_pretrain_step import load_inputs, model_batch

    logging.disable(logging.INFO)
    torch.set_num_threads(2)
    random.seed(0)
    defender, examples, _ = load_inputs()
    model = defender.model
    model.train()
    random.shuffle(examples)
    batches = [model_batch(defender, examples[i * 32 : (i + 1) * 32]) for i in range(10)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(batch: dict) -> None:
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()

    for batch in batches[:3]:
        step(batch)
    passes = []
    for _ in range(3):
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        passes.append((time.perf_counter() - start) / len(batches))
    return passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="one spinning process beside")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(" ".join(f"{s:.4f}" for s in time_steps()))
        return
    busy = None
    if args.busy:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for round_ in range(1, args.rounds + 1):
            for name, variables in SETTINGS.items():
                env = {k: v for k, v in os.environ.items() if k not in variables}
                env.update({k: v for k, v in variables.items() if v is not None})
                out = subprocess.run(
                    [sys.executable, __file__, "--child"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                passes = out.stdout.strip().splitlines()[-1]
                print(f"round {round_} | {name} | s per step, 3 passes: {passes}", flush=True)
    finally:
        if busy is not None:
            busy.kill()


if __name__ == "__main__":
    main()
