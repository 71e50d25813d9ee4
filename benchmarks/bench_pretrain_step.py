"""Where a step of the base Defender's pretraining goes, and what the trainer settings change.

Run (after `dvc repro source_data`, which made the scenes): `.venv/bin/python
benchmarks/bench_pretrain_step.py [--steps 220] [--batch-sizes 32 16] [--settings NAME ...]`.
Use 200-step windows or more, and compare settings in both orders: a setting run later in the
process runs faster (benchmarks/results/pretrain_step.md). It builds the
`pretrain_defender` node's conversations from the `base` env's catalog, then times:

- `trainer`: whole steps of `aot.defender.sft.train_defender_sft` (TRL's SFTTrainer with the
  dense and grounding losses, the pipeline's exact path), steps 20 to `--steps`, for each
  setting in `SETTINGS` (torch threads; a DataLoader worker that collates in another process);
- `collate`: the collator alone on one batch (chat template, tokenising, image processing);
- `model`: the model's forward and backward alone on that collated batch.

Writes a Markdown table to benchmarks/results/pretrain_step.md (`--append`: adds to it; the
prose there is written by hand). Nothing under data/ changes.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from aot.defender.sft import (
    DefenderSFTConfig,
    DenseCollator,
    _dataset,
    _image_tokens,
    train_defender_sft,
)
from aot.pipelines.bootstrap_dataset.defender_nodes import pretraining_examples

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_pretrain_step")
SETTINGS: dict[str, dict[str, Any]] = {
    "threads 2 (default)": {"threads": 2},
    "threads 1": {"threads": 1},
    "threads 1 + 1 collating worker": {
        "threads": 1,
        "extra": {"dataloader_num_workers": 1, "dataloader_persistent_workers": True},
    },
    "threads 2 + 1 collating worker": {
        "threads": 2,
        "extra": {"dataloader_num_workers": 1, "dataloader_persistent_workers": True},
    },
}


class StepClock(TrainerCallback):
    """perf_counter at the end of every optimizer step."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        self.at[state.global_step] = time.perf_counter()


def load_inputs() -> tuple[Any, list, dict[str, Any]]:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env="base") as session:
        catalog = session.load_context().catalog
        pretrain = catalog.load("params:pretrain")
        defender = catalog.load("initial_defender")
        sets = {
            prefix: (
                catalog.load(f"{prefix}_scenes"),
                catalog.load(f"{prefix}_records"),
                catalog.load(f"{prefix}_images"),
                int(pretrain["data"][repeats]),
            )
            for prefix, repeats in (("source", "repeats"), ("extended", "extended_repeats"))
        }
        examples = pretraining_examples(
            sets, pretrain["data"], pretrain["answer_mode"], catalog.load("params:seed")
        )
    return defender, examples, pretrain["trainer"]


def model_batch(defender: Any, examples: list) -> dict[str, Any]:
    """``examples`` collated as the trainer does, without the dense and grounding targets (which
    only the trainer's own losses read): what the model's forward takes."""
    collator = DenseCollator(processor=defender.processor, assistant_only_loss=True)
    rows = _dataset(examples, _image_tokens(defender, examples[0].image))
    batch = collator([dict(r) for r in rows])
    batch.pop("dense_targets")
    batch.pop("grounding_targets")
    return batch


def trainer_seconds_per_step(
    defender: Any, examples: list, trainer: dict[str, Any], setting: dict[str, Any], steps: int
) -> float:
    config = DefenderSFTConfig.from_dict(
        {**trainer, "max_steps": steps, "logging_steps": steps, **setting}, prefix="bench"
    )
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        train_defender_sft(defender, examples, config, tmp, callbacks=[clock])
    return (clock.at[steps] - clock.at[20]) / (steps - 20)


def part_seconds(defender: Any, examples: list, batch_size: int, repeats: int = 5) -> dict:
    torch.set_num_threads(2)
    rows = _dataset(
        examples[:: max(1, len(examples) // batch_size)][:batch_size],
        _image_tokens(defender, examples[0].image),
    )
    collator = DenseCollator(processor=defender.processor, assistant_only_loss=True)
    collator([dict(r) for r in rows])  # warm-up (the chat template compiles once)
    start = time.perf_counter()
    for _ in range(repeats):
        batch = collator([dict(r) for r in rows])
    collate = (time.perf_counter() - start) / repeats
    batch.pop("dense_targets")
    batch.pop("grounding_targets")
    model = defender.model.train()
    model(**batch).loss.backward()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model.zero_grad()
        model(**batch).loss.backward()
    model.zero_grad()
    return {"collate": collate, "model": (time.perf_counter() - start) / repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=220)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 16])
    parser.add_argument(
        "--settings", nargs="+", default=list(SETTINGS), help="names from SETTINGS, in run order"
    )
    parser.add_argument("--append", action="store_true", help="add to the results file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    defender, examples, trainer = load_inputs()
    lines = [
        "# One step of the base Defender's pretraining (`pretrain_defender`), 2 cores",
        "",
        f"`benchmarks/bench_pretrain_step.py --steps {args.steps}`: {len(examples)} conversations"
        " (source and extended training scenes), the `base` env's trainer settings.",
        "",
        "| batch | setting | s per trainer step | collate s | model forward + backward s |",
        "|---|---|---|---|---|",
    ]
    for batch_size in args.batch_sizes:
        parts = part_seconds(defender, examples, batch_size)
        for name in args.settings:
            setting = SETTINGS[name]
            if batch_size != args.batch_sizes[0] and name != "threads 2 (default)":
                continue
            seconds = trainer_seconds_per_step(
                defender, examples, {**trainer, "batch_size": batch_size}, setting, args.steps
            )
            lines.append(
                f"| {batch_size} | {name} | {seconds:.3f} | {parts['collate']:.3f} | "
                f"{parts['model']:.3f} |"
            )
            logger.info(lines[-1])
    out = ROOT / "benchmarks" / "results" / "pretrain_step.md"
    with out.open("a" if args.append else "w") as f:
        f.write("\n".join(lines) + "\n\n")
    logger.info("wrote %s", out)


if __name__ == "__main__":
    main()
