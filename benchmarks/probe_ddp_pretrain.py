"""Would the base Defender's pretraining run faster as two 1-thread processes than as one
2-thread process on a 2-core machine? A probe, not a pipeline setting.

Run (after `dvc repro source_data`):

    .venv/bin/python benchmarks/probe_ddp_pretrain.py --steps 100          # one process
    .venv/bin/accelerate launch --config_file conf/accelerate/cpu_gloo_2proc.yaml \\
        benchmarks/probe_ddp_pretrain.py --steps 100                       # two, gloo

It builds the `pretrain_defender` node's conversations from the `base` catalog (as
`bench_pretrain_step.py` does) and times whole steps of `aot.defender.sft.train_defender_sft`,
steps 20 to `--steps`. One process: the default recipe (batch 32, 2 threads). Two processes
(TRL's SFTTrainer under accelerate, DDP on gloo): batch 16 each (the same 32 per optimizer
step), 1 thread each. Prints seconds per step from the main process. Nothing under data/
changes.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

from aot.defender.sft import DefenderSFTConfig, train_defender_sft
from bench_pretrain_step import StepClock, load_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    defender, examples, trainer = load_inputs()
    batch = int(trainer.get("batch_size", 32))
    config = DefenderSFTConfig.from_dict(
        {
            **trainer,
            "max_steps": args.steps,
            "logging_steps": args.steps,
            "batch_size": batch // world,
            "threads": 2 // world,
        },
        prefix="probe",
    )
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        train_defender_sft(defender, examples, config, tmp, callbacks=[clock])
    if int(os.environ.get("RANK", "0")) == 0:
        per_step = (clock.at[args.steps] - clock.at[20]) / (args.steps - 20)
        print(
            f"processes {world}, batch {batch // world} each, threads {2 // world} each: "
            f"{per_step:.3f} s per step (steps 20 to {args.steps})",
            flush=True,
        )


if __name__ == "__main__":
    main()
