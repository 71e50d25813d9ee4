"""The Defender's DAPO trainer: TRL's GRPOTrainer with DAPO settings and real dynamic sampling.

The recipe is the AOT release's (aot-method.md section 4): n = 5 rollouts per prompt at
temperature 1, GRPO group-normalised advantages, clip-higher (epsilon 0.2 / 0.28), token-level
loss averaging (`loss_type="dapo"`), no KL term and no reference model (beta 0), the
correct-first reward of `aot.rewards`, and online filtering: groups with mean reward <= 0.01 or
>= 0.99 are dropped and the batch is refilled (`aot.defender.dynamic_sampling`, hand-written
because TRL has no dynamic sampling).

`train_defender_dapo` is the node-friendly entry point: a Defender (or its folder), a record
table, the images, a parameter dict; it checkpoints every `save_steps` into
`<output_dir>/checkpoints` (model, optimizer, scheduler and RNG states: TRL/transformers'
checkpointing), resumes from the last checkpoint there when one exists, and saves the final
model as a plain Defender folder `<output_dir>/defender` (LoRA merged back, safetensors).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from datasets import Dataset
from transformers import TrainerCallback, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig

from aot.config import reject_unknown
from aot.datasets.model_folder import atomic_folder
from aot.defender.dynamic_sampling import (
    INDEX_COLUMN,
    METRIC_PREFIX,
    DynamicSamplingGRPOTrainer,
)
from aot.defender.examples import load_image
from aot.defender.model import Defender, user_content
from aot.defender.sft import TimeBudget, current_training_args, without_wall_clock
from aot.rewards import PROMPT_STYLES, correct_first_reward, make_prompt

logger = logging.getLogger(__name__)

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
ANSWER_MODES = ("word", "letter")
REQUIRED_COLUMNS = ("image", "question", "options", "answer", "answer_text")
CHECKPOINTS = "checkpoints"
FINAL_MODEL = "defender"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DefenderDAPOConfig:
    """Every knob of a Defender DAPO run (Kedro parameters, `dapo.*` by default).

    Defaults are the AOT/EasyR1 recipe where it has one (lr 1e-6 is for a 7B model; a tiny
    Defender wants about 1e-4 to 1e-3).
    """

    # rollouts
    num_generations: int = 5
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    groups_per_step: int = 8  # informative prompt groups per optimizer step
    # loss
    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float = 0.28
    beta: float = 0.0
    num_iterations: int = 1  # optimisation passes over each batch (1: fully on-policy)
    mask_truncated_completions: bool = False
    # optimiser
    learning_rate: float = 1e-6
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    max_steps: int = 100
    # prompts and reward
    answer_mode: str = "word"
    prompt_style: str = "protocol"
    # model
    lora: dict[str, Any] | None = None
    freeze_vision: bool = False
    gradient_checkpointing: bool = False
    # dynamic sampling
    dynamic_sampling: bool = True
    filter_low: float = 0.01
    filter_high: float = 0.99
    max_tries: int = 4  # rollout rounds per step, the first included
    # run
    save_steps: int = 50
    save_total_limit: int | None = 2
    resume: bool = True
    seed: int = 0
    threads: int | None = None
    time_budget_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # passed to GRPOConfig as is

    @classmethod
    def from_dict(
        cls, params: Mapping[str, Any] | None, prefix: str = "dapo"
    ) -> DefenderDAPOConfig:
        params = dict(params or {})
        reject_unknown(prefix, cls, params)
        config = cls(**params)
        config.validate(prefix)
        return config

    def validate(self, prefix: str = "dapo") -> None:
        def fail(name: str, wanted: str) -> None:
            raise ValueError(f"{prefix}.{name} must be {wanted}, got {getattr(self, name)!r}")

        for name in (
            "num_generations",
            "max_new_tokens",
            "groups_per_step",
            "num_iterations",
            "max_steps",
            "max_tries",
            "save_steps",
        ):
            if not _positive_int(getattr(self, name)):
                fail(name, "a positive integer")
        if self.num_generations < 2:
            fail("num_generations", ">= 2 (a group needs two rollouts to have an advantage)")
        for name in ("temperature", "learning_rate"):
            if not _number(getattr(self, name)) or getattr(self, name) <= 0:
                fail(name, "a positive number")
        for name in ("epsilon", "epsilon_high", "beta", "weight_decay", "max_grad_norm"):
            if not _number(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "a number >= 0")
        if not _number(self.top_p) or not 0 < self.top_p <= 1:
            fail("top_p", "in (0, 1]")
        if self.epsilon >= 1:
            fail("epsilon", "< 1")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            fail("warmup_steps", "an integer >= 0")
        if self.loss_type not in LOSS_TYPES:
            fail("loss_type", f"one of {LOSS_TYPES}")
        if self.answer_mode not in ANSWER_MODES:
            fail("answer_mode", f"one of {ANSWER_MODES}")
        if self.prompt_style not in PROMPT_STYLES:
            fail("prompt_style", f"one of {PROMPT_STYLES}")
        if self.lora is not None and not isinstance(self.lora, Mapping):
            fail("lora", "null or a mapping of peft LoraConfig arguments")
        for name in (
            "freeze_vision",
            "gradient_checkpointing",
            "dynamic_sampling",
            "mask_truncated_completions",
            "resume",
        ):
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")
        for name in ("filter_low", "filter_high"):
            if not _number(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                fail(name, "a number in [0, 1]")
        if self.filter_low >= self.filter_high:
            fail("filter_low", f"below {prefix}.filter_high ({self.filter_high})")
        if self.save_total_limit is not None and not _positive_int(self.save_total_limit):
            fail("save_total_limit", "null or a positive integer")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            fail("seed", "an integer")
        if self.threads is not None and not _positive_int(self.threads):
            fail("threads", "null or a positive integer")
        if self.time_budget_s is not None and (
            not _number(self.time_budget_s) or self.time_budget_s <= 0
        ):
            fail("time_budget_s", "null or a positive number of seconds")
        if not isinstance(self.extra, Mapping):
            fail("extra", "a mapping")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- data, reward


def _text_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


IMAGE_KEY_COLUMN = "image_key"  # row -> index into the images held in memory


def _attach_image(batch: dict[str, list], images: Sequence[Any]) -> dict[str, list]:
    out = {k: v for k, v in batch.items() if k != IMAGE_KEY_COLUMN}
    out["image"] = [images[k] for k in batch[IMAGE_KEY_COLUMN]]
    return out


def dapo_dataset(
    records: pd.DataFrame,
    images: Mapping[str, Any],
    *,
    answer_mode: str = "word",
    prompt_style: str = "protocol",
) -> Dataset:
    """One conversational GRPO prompt per record: the Defender's user turn (text, then image),
    the image, and the columns the reward reads (answer, options, answer_text).

    Each distinct image is held once in memory and attached to its rows when the trainer reads
    them (a `datasets` format transform, as for the SFT tables): a PIL column would be stored as
    PNG and decoded again on every read (reads and decoding: 2.3 s of a default round, 0.6 now).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in records.columns]
    if missing:
        raise ValueError(f"dapo: the record table lacks column(s) {missing}")
    if records.empty:
        raise ValueError("dapo: the record table is empty")
    key_of: dict[str, int] = {}
    pictures: list[Any] = []
    rows = []
    for record in records.to_dict("records"):
        key = record["image"]
        if key not in key_of:
            key_of[key] = len(pictures)
            pictures.append(load_image(images, key))
        options = [str(o) for o in list(record["options"])]
        prompt = make_prompt(record["question"], options, prompt_style, answer_mode)
        rows.append(
            {
                "prompt": [{"role": "user", "content": user_content(prompt)}],
                IMAGE_KEY_COLUMN: key_of[key],
                "answer": str(record["answer"]),
                "options": options,
                "answer_text": _text_or_none(record["answer_text"]),
                "record_id": str(record.get("record_id", len(rows))),
                "family": str(record.get("family", "")),
                INDEX_COLUMN: len(rows),
            }
        )
    table = Dataset.from_list(rows)
    table.set_transform(partial(_attach_image, images=pictures))
    return table


def completion_text(completion: Any) -> str:
    """The text of a TRL completion (conversational: a list of messages; or a plain string)."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content)


class CorrectFirstReward:
    """TRL reward function: `aot.rewards.correct_first_reward` (1.0 / 0.8 / 0.0) per rollout."""

    def __init__(self, mode: str = "word") -> None:
        self.mode = mode
        self.__name__ = "correct_first"

    def __call__(
        self,
        completions: Sequence[Any],
        answer: Sequence[str],
        options: Sequence[Sequence[str]],
        answer_text: Sequence[str | None],
        **_: Any,
    ) -> list[float]:
        return [
            correct_first_reward(completion_text(c), a, list(o or []), self.mode, t).overall
            for c, a, o, t in zip(completions, answer, options, answer_text, strict=True)
        ]


# ------------------------------------------------------------------------------- trainer


def _num_processes() -> int:
    """Processes of this run (`accelerate launch` sets them; 1 otherwise)."""
    from accelerate import PartialState

    return PartialState().num_processes


def _as_defender(defender: Defender | str | os.PathLike) -> Defender:
    if isinstance(defender, Defender):
        return defender
    return Defender.from_pretrained(defender)


def build_dapo_trainer(
    defender: Defender,
    dataset: Dataset,
    config: DefenderDAPOConfig,
    checkpoint_dir: str | Path,
    *,
    reward_funcs: Sequence[Any] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> DynamicSamplingGRPOTrainer:
    """The DAPO trainer for `defender` on a prompt `dataset` (see `dapo_dataset`).

    `reward_funcs` defaults to the correct-first reward in `config.answer_mode`; tests pass
    scripted ones.
    """
    processes = _num_processes()
    if len(dataset) < config.groups_per_step * processes:
        raise ValueError(
            f"dapo: {len(dataset)} prompts cannot fill one batch of "
            f"groups_per_step={config.groups_per_step} groups"
            + (f" on each of {processes} processes" if processes > 1 else "")
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    model = defender.model
    if config.freeze_vision:
        for p in model.model.visual.parameters():
            p.requires_grad_(False)
    batch = config.groups_per_step * config.num_generations
    kwargs: dict[str, Any] = dict(
        output_dir=str(checkpoint_dir),
        max_steps=config.max_steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=config.num_generations,
        num_iterations=config.num_iterations,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=0,
        loss_type=config.loss_type,
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high,
        beta=config.beta,
        scale_rewards="group",
        mask_truncated_completions=config.mask_truncated_completions,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        logging_steps=1,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        seed=config.seed,
        data_seed=config.seed,
        activation_checkpointing=config.gradient_checkpointing,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        log_completions=False,
    )
    kwargs.update(config.extra)
    args = GRPOConfig(**current_training_args(kwargs))
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **config.lora)
    return DynamicSamplingGRPOTrainer(
        model=model,
        reward_funcs=list(reward_funcs or [CorrectFirstReward(config.answer_mode)]),
        args=args,
        train_dataset=dataset,
        processing_class=defender.processor,
        peft_config=peft_config,
        callbacks=[TimeBudget(config.time_budget_s), *callbacks],
        groups_per_step=config.groups_per_step,
        filter_low=config.filter_low,
        filter_high=config.filter_high,
        max_tries=config.max_tries,
        sampling_seed=config.seed,
        dynamic_sampling=config.dynamic_sampling,
    )


def step_metrics(log_history: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per optimizer step from the trainer's log history (the final summary and the
    wall-clock columns dropped)."""
    rows = [dict(r) for r in log_history if "step" in r and "train_runtime" not in r]
    table = without_wall_clock(pd.DataFrame(rows))
    if table.empty:
        return pd.DataFrame({"step": pd.Series(dtype=int)})
    table = table.groupby("step", as_index=False).last()
    first = ["step", "loss", "reward", "reward_std"]
    ours = sorted(c for c in table.columns if c.startswith(METRIC_PREFIX))
    rest = [c for c in table.columns if c not in first and c not in ours]
    return table[[c for c in first if c in table.columns] + ours + rest].reset_index(drop=True)


def last_checkpoint(checkpoint_dir: str | Path) -> str | None:
    checkpoint_dir = Path(checkpoint_dir)
    return get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None


def train_defender_dapo(
    defender: Defender | str | os.PathLike,
    records: pd.DataFrame,
    images: Mapping[str, Any],
    params: Mapping[str, Any] | DefenderDAPOConfig | None,
    output_dir: str | os.PathLike,
    *,
    reward_funcs: Sequence[Any] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> tuple[Defender | None, pd.DataFrame]:
    """Trains `defender` with DAPO on `records`; returns the trained Defender and per-step metrics.

    `records` needs the columns image, question, options, answer and answer_text (record_id and
    family are carried along); `images` maps each image key to a PIL image or a callable
    returning one. A checkpoint is written every `save_steps` into `<output_dir>/checkpoints`;
    when one exists (and `resume` is on) training resumes from it with its optimizer, scheduler
    and RNG states. The final model is saved atomically as `<output_dir>/defender`.

    Under `accelerate launch` (`aot.distributed`) every process runs this: TRL's trainer
    splits each step's prompts over the processes (`groups_per_step` informative groups per
    process) and averages the gradients; only the main process writes the final folder (see
    `_save_final`; with a sharded model only the main process gets the Defender back).
    """
    config = (
        params if isinstance(params, DefenderDAPOConfig) else DefenderDAPOConfig.from_dict(params)
    )
    output_dir = Path(output_dir)
    defender = _as_defender(defender)
    dataset = dapo_dataset(
        records, images, answer_mode=config.answer_mode, prompt_style=config.prompt_style
    )
    checkpoint_dir = output_dir / CHECKPOINTS
    trainer = build_dapo_trainer(
        defender, dataset, config, checkpoint_dir, reward_funcs=reward_funcs, callbacks=callbacks
    )
    resume = last_checkpoint(checkpoint_dir) if config.resume else None
    done = TrainerState.load_from_json(str(Path(resume) / TRAINER_STATE_NAME)) if resume else None
    if done is not None and done.global_step >= config.max_steps:
        # transformers would train one step past max_steps when resuming a finished run
        logger.info("DAPO: %s already holds all %d steps; not training", resume, config.max_steps)
        trainer._load_from_checkpoint(resume)
        trainer.state = done
    else:
        if resume:
            logger.info("DAPO: resuming from %s", resume)
        start = time.perf_counter()
        with warnings.catch_warnings():
            # TRL asks transformers' deprecated `is_gradient_checkpointing` on every rollout;
            # nothing a user can change, so not repeated in every step's log.
            warnings.filterwarnings(
                "ignore",
                message="`is_gradient_checkpointing` is deprecated",
                category=FutureWarning,
            )
            trainer.train(resume_from_checkpoint=resume)
        logger.info(
            "Defender DAPO: %d steps in %.0f s",
            trainer.state.global_step,
            time.perf_counter() - start,
        )
    trained = _save_final(trainer, defender, config, output_dir / FINAL_MODEL)
    metrics = step_metrics(trainer.state.log_history)
    log_sampling_summary(metrics, config.groups_per_step)
    return trained, metrics


def log_sampling_summary(metrics: pd.DataFrame, groups_per_step: int) -> None:
    """One line on how many steps dynamic sampling left without an update or short of
    ``groups_per_step`` informative groups (each step logs its own counts at INFO)."""
    if "dapo/skipped" not in metrics or metrics.empty:
        return
    skipped = int((metrics["dapo/skipped"] > 0).sum())
    short = int(
        ((metrics["dapo/skipped"] == 0) & (metrics["dapo/groups_kept"] < groups_per_step)).sum()
    )
    logger.log(
        logging.WARNING if skipped or short else logging.INFO,
        "DAPO: of %d steps, %d had no informative group (no update) and %d fewer than %d "
        "(columns dapo/skipped and dapo/groups_kept of the training log)",
        len(metrics),
        skipped,
        short,
        groups_per_step,
    )


def _save_final(
    trainer: DynamicSamplingGRPOTrainer,
    defender: Defender,
    config: DefenderDAPOConfig,
    final: Path,
) -> Defender | None:
    """Saves the trained Defender atomically as a plain folder (LoRA merged), from the main
    process only, and returns it.

    Replicated models (one process, DDP) are merged and saved from memory; every process
    returns the same Defender. A sharded model (FSDP, DeepSpeed ZeRO-3) is gathered through
    `trainer.save_model` (every process takes part; use `fsdp_state_dict_type:
    FULL_STATE_DICT`), reloaded on the main process, merged and saved; the main process returns
    it and the others return None.
    """
    from accelerate.utils import DistributedType

    acc = trainer.accelerator
    sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if not sharded:
        model = acc.unwrap_model(trainer.model)
        if config.lora:
            model = model.merge_and_unload()
        for p in model.parameters():
            p.requires_grad_(True)
        trained = Defender(model.eval(), defender.processor)
        if acc.is_main_process:
            with atomic_folder(final) as tmp:
                trained.save_pretrained(tmp)
        acc.wait_for_everyone()
        return trained
    staging = final.with_name(final.name + ".gathered")
    if acc.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    acc.wait_for_everyone()
    trainer.save_model(str(staging))  # collective: gathers the shards, the main process writes
    trained = None
    if acc.is_main_process:
        defender.processor.save_pretrained(staging)
        gathered = Defender.from_pretrained(staging)  # an adapter folder loads on its base
        model = gathered.model.merge_and_unload() if config.lora else gathered.model
        trained = Defender(model.eval(), gathered.processor)
        with atomic_folder(final) as tmp:
            trained.save_pretrained(tmp)
        shutil.rmtree(staging, ignore_errors=True)
    acc.wait_for_everyone()
    return trained
