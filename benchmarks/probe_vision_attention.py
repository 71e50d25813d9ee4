"""Is a pretraining step faster with the batched vision attention? Both in one trainer run.

Run (after `dvc repro source_data`): `.venv/bin/python benchmarks/probe_vision_attention.py
[--steps 420] [--window 25]`. Trains the `base` env's initial Defender on the
`pretrain_defender` node's conversations with the node's own path
(`aot.defender.sft.train_defender_sft`, 2 threads), switching the vision attention between
transformers' per-chunk loop (`Qwen2_5_VLVisionAttention`) and
`aot.defender.vision_attention.BatchedVisionAttention` every ``--window`` steps. The two give
bit-identical numbers, so the run is one trajectory; alternating windows in one process spreads
the machine's drift over both (separate runs of each were too noisy to tell 5% apart:
results/pretrain_step.md). Prints the median and mean seconds per step of each, steps 20 on.
Nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transformers import TrainerCallback
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention

from aot.defender.sft import DefenderSFTConfig, train_defender_sft
from aot.defender.vision_attention import BatchedVisionAttention
from bench_pretrain_step import load_inputs

WAYS = {"per chunk (library)": Qwen2_5_VLVisionAttention, "batched": BatchedVisionAttention}


class Alternate(TrainerCallback):
    """Sets the attention class before each step; records each step's time under its way."""

    def __init__(self, modules: list, window: int, skip: int = 20) -> None:
        self.modules, self.window, self.skip = modules, window, skip
        self.way = ""
        self.started = 0.0
        self.seconds: dict[str, list[float]] = {way: [] for way in WAYS}

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        self.way = list(WAYS)[(state.global_step // self.window) % 2]
        for module in self.modules:
            module.__class__ = WAYS[self.way]
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        if state.global_step > self.skip:
            self.seconds[self.way].append(time.perf_counter() - self.started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=420)
    parser.add_argument("--window", type=int, default=25)
    args = parser.parse_args()
    defender, examples, trainer = load_inputs()
    modules = [m for m in defender.model.modules() if isinstance(m, Qwen2_5_VLVisionAttention)]
    clock = Alternate(modules, args.window)
    config = DefenderSFTConfig.from_dict(
        {**trainer, "max_steps": args.steps, "logging_steps": args.steps, "threads": 2},
        prefix="probe",
    )
    with tempfile.TemporaryDirectory() as tmp:
        train_defender_sft(defender, examples, config, tmp, callbacks=[clock])
    for way, seconds in clock.seconds.items():
        print(
            f"{way}: {len(seconds)} steps, median {statistics.median(seconds):.4f} s, "
            f"mean {statistics.fmean(seconds):.4f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
