"""Supervised training of the Defender on world questions: TRL's SFTTrainer plus dense grounding.

`SFTTrainer` does the work (assistant-only loss, VLM collation, LoRA through peft). What TRL
lacks, and we add in a small subclass, is the dense grounding loss of `aot.defender.dense`: the
merged image tokens, read out through the LM's own (tied) output embedding, must name the colours
and shapes the scene graph puts under them. No new parameters are trained for it, so the saved
Defender is a plain Qwen2.5-VL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from PIL import Image
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from aot.defender.assistant_masks import vectorised_assistant_masks
from aot.defender.dense import (
    DENSE_LABELS,
    DENSE_LOSSES,
    QUESTION_LABELS,
    LayerTap,
    VisionTap,
    dense_grounding_loss,
)
from aot.defender.image_cache import BoundedCache, cached_image_features
from aot.defender.model import Defender, user_content
from aot.defender.rope_cache import ROPE_CACHE_BYTES, cached_rope_index
from aot.defender.sft_processes import in_distributed_run, train_in_processes
from aot.defender.spare_cores import SpareCoreThreads

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTExample:
    """One training conversation about one image: (prompt, ideal reply) turns, dense targets.

    Several turns per image give several answer tokens of signal for one pass over the image
    and the shared prefix; the loss covers every assistant turn.
    """

    image: Image.Image
    turns: tuple[tuple[str, str], ...]
    dense: np.ndarray | None = None  # (image tokens, len(DENSE_LABELS)) or None for non-world data
    # (image tokens,) aot.defender.dense.question_targets of the first turn's question, or None
    grounding: np.ndarray | None = None

    def messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for k, (prompt, completion) in enumerate(self.turns):
            out.append({"role": "user", "content": user_content(prompt, with_image=k == 0)})
            out.append({"role": "assistant", "content": [{"type": "text", "text": completion}]})
        return out


@dataclass(frozen=True)
class DefenderSFTConfig:
    """Every knob of a Defender SFT run (Kedro parameters `sft.defender.*` and `pretrain.*`)."""

    max_steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    lr_scheduler_type: str = "cosine"
    dense_weight: float = 1.0
    dense_loss: str = "softmax"  # aot.defender.dense.DENSE_LOSSES
    grounding_weight: float = 0.0  # question grounding (aot.defender.dense.question_targets)
    grounding_layer: int = 2  # the LM layer whose image-token outputs are read out for it
    lora: dict[str, Any] | None = None
    freeze_vision: bool = False
    # With the vision tower frozen, each image's features are computed once and kept, up to
    # this many MB (0: off); the same numbers, without the tower's forward on later epochs.
    feature_cache_mb: int = 1024
    time_budget_s: float | None = None
    logging_steps: int = 50
    threads: int | None = None  # per process; None: torch's default (the cores shared out)
    # Up to this many threads while other processes leave cores idle, checked every 25 steps
    # (aot.defender.spare_cores; the same weights on any count); None: the count stays fixed.
    spare_core_threads: int | None = None
    # Data-parallel processes on this machine (aot.defender.sft_processes): `batch_size` in all,
    # an equal share each. Another trajectory than one process: check a recipe's results again.
    processes: int = 1
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # passed to SFTConfig as is

    @classmethod
    def from_dict(
        cls, params: dict[str, Any] | None, prefix: str = "sft.defender"
    ) -> DefenderSFTConfig:
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"{prefix}: unknown key(s) {unknown}; known: {sorted(known)}")
        config = cls(**params)
        for name in ("max_steps", "batch_size", "logging_steps", "processes"):
            value = getattr(config, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{prefix}.{name} must be a positive integer, got {value!r}")
        if config.batch_size % config.processes:
            raise ValueError(
                f"{prefix}.batch_size ({config.batch_size}) must be a multiple of "
                f"{prefix}.processes ({config.processes})"
            )
        spare = config.spare_core_threads
        if spare is not None and (
            not isinstance(spare, int) or isinstance(spare, bool) or spare < 1
        ):
            raise ValueError(
                f"{prefix}.spare_core_threads must be null or a positive integer, got {spare!r}"
            )
        cache_mb = config.feature_cache_mb
        if not isinstance(cache_mb, int) or isinstance(cache_mb, bool) or cache_mb < 0:
            raise ValueError(f"{prefix}.feature_cache_mb must be an integer >= 0, got {cache_mb!r}")
        if config.learning_rate <= 0:
            raise ValueError(f"{prefix}.learning_rate must be positive, got {config.learning_rate}")
        if config.dense_weight < 0:
            raise ValueError(f"{prefix}.dense_weight must be >= 0, got {config.dense_weight}")
        if config.grounding_weight < 0:
            raise ValueError(
                f"{prefix}.grounding_weight must be >= 0, got {config.grounding_weight}"
            )
        layer = config.grounding_layer
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 1:
            raise ValueError(f"{prefix}.grounding_layer must be an integer >= 1, got {layer!r}")
        if config.dense_loss not in DENSE_LOSSES:
            raise ValueError(
                f"{prefix}.dense_loss must be one of {DENSE_LOSSES}, got {config.dense_loss!r}"
            )
        return config


# transformers 5 renamed these TrainingArguments; the old names still work but warn on every
# trainer built. Settings a user gives under the old names in `extra` keep working.
RENAMED_TRAINING_ARGS = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


# Wall-clock figures the trainers put in their logs. They are left out of the logs the pipelines
# save, so that a rerun writes the same bytes and `dvc repro` on a fresh clone leaves git clean;
# the console still shows them as the trainer logs.
WALL_CLOCK_COLUMNS = (
    "step_time",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
)


def without_wall_clock(log: pd.DataFrame) -> pd.DataFrame:
    """``log`` without its `WALL_CLOCK_COLUMNS`: what is left depends on the seed alone."""
    return log.drop(columns=[c for c in WALL_CLOCK_COLUMNS if c in log.columns])


def current_training_args(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with the deprecated TrainingArguments names replaced by the current ones."""
    return {RENAMED_TRAINING_ARGS.get(key, key): value for key, value in settings.items()}


def _word_token_ids(tokenizer: Any, word: str) -> list[int]:
    """Single-token spellings of `word` (bare, as in `\\boxed{red}`, and with a leading space)."""
    ids = []
    for text in (word, " " + word):
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1:
            ids.append(encoded[0])
    return ids


def dense_readout(tokenizer: Any) -> tuple[list[int], torch.Tensor]:
    """Vocabulary columns that read out each dense label, and the label index of each column."""
    columns: list[int] = []
    label_of_column: list[int] = []
    for k, label in enumerate(DENSE_LABELS):
        for token_id in _word_token_ids(tokenizer, label.split(":", 1)[1]):
            columns.append(token_id)
            label_of_column.append(k)
    if not columns:
        raise ValueError(
            "dense grounding: no colour or shape word is a single token of this tokenizer"
        )
    return columns, torch.tensor(label_of_column)


class DenseCollator(DataCollatorForVisionLanguageModeling):
    """TRL's VLM collator, plus the dense targets of each example stacked in image-token order.

    Its assistant masks come from `aot.defender.assistant_masks` (the same masks as
    transformers', without a Python loop over every token)."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        dense = [np.asarray(e.pop("dense"), dtype=np.float32) for e in examples]
        grounding = [np.asarray(e.pop("grounding", []), dtype=np.int64) for e in examples]
        for e in examples:
            e.pop("has_dense", None)
        with vectorised_assistant_masks(self.processor):
            batch = super().torch_call(examples)
        width = len(DENSE_LABELS)
        batch["dense_targets"] = torch.from_numpy(
            np.concatenate([d.reshape(-1, width) for d in dense])
        )
        image_tokens = (batch["input_ids"] == self.processor.image_token_id).sum(dim=1).tolist()
        rows = []
        for targets, n in zip(grounding, image_tokens, strict=True):
            if targets.size == 0:
                targets = np.full(n, -1, dtype=np.int64)
            elif targets.size != n:
                raise ValueError(
                    f"question grounding targets cover {targets.size} image tokens, the image "
                    f"has {n}"
                )
            rows.append(targets)
        batch["grounding_targets"] = torch.from_numpy(np.concatenate(rows))
        return batch


class DenseSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss adds the dense and the question grounding losses (TRL has neither).

    `dense_weight` x the dense grounding loss, and `grounding_weight` x the cross-entropy of a
    linear head (`grounding_head`, trained here and never saved) that reads, from the image
    tokens' hidden states after LM layer `grounding_layer`, which tokens hold what the question
    asks about (`aot.defender.dense.question_targets`; -1 marks examples without targets).
    """

    def __init__(
        self,
        *args: Any,
        dense_weight: float = 1.0,
        dense_loss: str = "softmax",
        grounding_weight: float = 0.0,
        grounding_layer: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.dense_weight = dense_weight
        self.dense_loss = dense_loss
        self.grounding_weight = grounding_weight
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self._tap = VisionTap(base)
        self._lm_head = base.lm_head
        self._columns, self._label_of_column = dense_readout(self.processing_class.tokenizer)
        self._image_token_id = base.config.image_token_id
        self._layer_tap: LayerTap | None = None
        self.grounding_head: torch.nn.Linear | None = None
        self._head_in_optimizer = False
        if grounding_weight > 0:
            layers = base.model.language_model.layers
            if grounding_layer > len(layers):
                raise ValueError(
                    f"grounding_layer {grounding_layer} is past the Defender's {len(layers)} "
                    "LM layers"
                )
            self._layer_tap = LayerTap(layers[grounding_layer - 1])
            hidden = base.config.text_config.hidden_size
            self.grounding_head = torch.nn.Linear(hidden, len(QUESTION_LABELS)).to(base.device)

    def create_optimizer(self):  # noqa: ANN201
        """TRL's optimizer, plus the grounding head's parameters in a group of their own."""
        optimizer = super().create_optimizer()
        if self.grounding_head is not None and not self._head_in_optimizer:
            optimizer.add_param_group(
                {"params": list(self.grounding_head.parameters()), "weight_decay": 0.0}
            )
            self._head_in_optimizer = True
        return optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001, ANN201
        """TRL's step; with several processes, also averages the grounding head's gradients,
        which DDP does not see (the head is not part of the wrapped model)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.grounding_head is not None and self.accelerator.num_processes > 1:
            # Every rank joins on every step, even one whose batch had no question targets (its
            # gradient is zero then); averaging after each micro-batch is linear, so gradient
            # accumulation stays right.
            for p in self.grounding_head.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.accelerator.num_processes
        return loss

    def _log_metric(self, model: Any, name: str, value: torch.Tensor) -> None:
        mode = "train" if model.training else "eval"
        # the mean over processes, as TRL logs its own metrics (a no-op in one process)
        value = self.accelerator.gather(value.detach()[None]).mean()
        self._metrics[mode][name].append(float(value))

    def _grounding_loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden = self._layer_tap.hidden[input_ids == self._image_token_id]
        logits = self.grounding_head(hidden)
        return torch.nn.functional.cross_entropy(logits, targets.to(logits.device), ignore_index=-1)

    def remove_taps(self) -> None:
        self._tap.remove()
        if self._layer_tap is not None:
            self._layer_tap.remove()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        targets = inputs.pop("dense_targets", None)
        grounding = inputs.pop("grounding_targets", None)
        input_ids = inputs["input_ids"]
        # Never ask TRL for the outputs here: with return_outputs=True it runs a second forward
        # under no_grad, which costs a full pass and overwrites the tapped image tokens with
        # detached ones, so the dense loss would stop reaching the vision tower.
        loss = super().compute_loss(
            model, inputs, return_outputs=False, num_items_in_batch=num_items_in_batch
        )
        if targets is not None and self.dense_weight > 0 and self._tap.tokens is not None:
            logits = self._lm_head(self._tap.tokens)[:, self._columns]
            dense = dense_grounding_loss(logits, targets, self._label_of_column, self.dense_loss)
            loss = loss + self.dense_weight * dense
            self._log_metric(model, "dense_loss", dense)
        if (
            self.grounding_head is not None
            and grounding is not None
            and bool((grounding >= 0).any())
            and self._layer_tap.hidden is not None
        ):
            question = self._grounding_loss(input_ids, grounding)
            loss = loss + self.grounding_weight * question
            self._log_metric(model, "grounding_loss", question)
        if return_outputs:  # only the deprecated compute_metrics path asks; it gets TRL's outputs
            with torch.no_grad():
                return loss, model(**inputs)
        return loss


class TimeBudget(TrainerCallback):
    """Stops training once `seconds` of wall time have passed (logged), keeping what was learned."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        if not self.seconds:
            return control
        over = time.perf_counter() - self.start > self.seconds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # all processes stop at the same step, or the ones still training would wait forever
            flag = torch.tensor([int(over)], device=args.device)  # nccl reduces device tensors
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            over = bool(flag.item())
        if over:
            logger.warning(
                "Time budget of %.0f s reached at step %d; stopping",
                self.seconds,
                state.global_step,
            )
            control.should_training_stop = True
        return control


def check_replicas_agree(trainer: DenseSFTTrainer) -> None:
    """Raises unless every process ends with the same weights, grounding head included: the
    check that data-parallel training kept its replicas in step (a gradient left unsynchronised
    shows up here, not as a subtly worse model)."""
    modules = [trainer.accelerator.unwrap_model(trainer.model)]
    if trainer.grounding_head is not None:
        modules.append(trainer.grounding_head)
    named = [
        (f"{prefix}{name}", p)
        for prefix, m in zip(("", "grounding_head."), modules, strict=False)
        for name, p in m.named_parameters()
    ]
    # a checksum per tensor (sum and sum of squares), compared across processes
    local = torch.stack(
        [(p.detach().double().sum() + p.detach().double().square().sum()) for _, p in named]
    )
    everyone = trainer.accelerator.gather(local[None])
    differ = (everyone != everyone[0]).any(dim=0).nonzero().flatten().tolist()
    if differ:
        raise RuntimeError(
            f"Defender SFT: the processes ended with different weights in {len(differ)} of "
            f"{len(named)} tensors (first: {named[differ[0]][0]}); gradients were not "
            "synchronised"
        )


class SFTTable(NamedTuple):
    """Training conversations as a `datasets.Dataset` (`rows`: image key, messages, dense and
    grounding targets) and the distinct images the keys point to, kept once, in memory."""

    rows: Dataset
    images: list[Image.Image]

    def dataset(self) -> Dataset:
        """The rows with each row's image attached under `images` when it is read (a format
        transform). Putting the images into the table itself would PNG-encode one copy per
        conversation: with 8 conversations per image that was most of pretraining's 4 GB peak.
        """
        return self.rows.with_transform(partial(_attach_images, images=self.images))


def sft_table(examples: Sequence[SFTExample], n_tokens: int) -> SFTTable:
    """The examples as an `SFTTable` (`n_tokens`: image tokens of an image without dense
    targets, whose rows get an all-zero target)."""
    images: list[Image.Image] = []
    key_of: dict[int, int] = {}
    keys = []
    for e in examples:
        if id(e.image) not in key_of:
            key_of[id(e.image)] = len(images)
            images.append(e.image)
        keys.append(key_of[id(e.image)])
    empty = np.zeros((n_tokens, len(DENSE_LABELS)), dtype=np.float32)
    rows = Dataset.from_dict(
        {
            "image_key": keys,
            "messages": [e.messages() for e in examples],
            # image sizes may differ (source and extended scenes), so one array per row
            "dense": [
                np.asarray(e.dense if e.dense is not None else empty, np.float32).reshape(-1)
                for e in examples
            ],
            # empty: no question targets (the collator fills -1, ignored, for its image tokens)
            "grounding": [
                np.asarray(e.grounding if e.grounding is not None else [], np.int64)
                for e in examples
            ],
        }
    )
    return SFTTable(rows, images)


def _dataset(examples: Sequence[SFTExample], n_tokens: int) -> Dataset:
    """The examples as a `datasets.Dataset` whose rows carry their image under `images`."""
    return sft_table(examples, n_tokens).dataset()


def _attach_images(batch: dict[str, list], images: Sequence[Image.Image]) -> dict[str, list]:
    return {
        "images": [[images[k]] for k in batch["image_key"]],
        "messages": batch["messages"],
        "dense": batch["dense"],
        "grounding": batch["grounding"],
    }


def _image_tokens(defender: Defender, image: Image.Image) -> int:
    grid = defender.processor.image_processor(images=[image], return_tensors="pt")[
        "image_grid_thw"
    ][0]
    return int(grid.prod()) // 4


def train_defender_sft(
    defender: Defender,
    examples: Sequence[SFTExample],
    config: DefenderSFTConfig,
    output_dir: str | Path,
    eval_examples: Sequence[SFTExample] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> tuple[Defender, pd.DataFrame]:
    """Fine-tunes `defender` on `examples`; returns the trained Defender and the training log.

    `callbacks` are added to the trainer's own (the time budget), e.g. to time steps.

    Full fine-tuning by default; `config.lora` (peft `LoraConfig` keyword arguments) trains an
    adapter instead, merged into the weights before returning so the result loads like any model.
    """
    if not examples:
        raise ValueError("train_defender_sft: no training examples")
    start_processes = config.processes > 1 and not in_distributed_run()
    if start_processes and callbacks:
        raise ValueError("train_defender_sft: callbacks need processes=1")
    n_tokens = _image_tokens(defender, examples[0].image)
    train = sft_table(examples, n_tokens)
    evaluation = sft_table(eval_examples, n_tokens) if eval_examples else None
    if start_processes:
        return train_in_processes(defender, train, evaluation, config, output_dir)
    return train_defender_on_table(defender, train, config, output_dir, evaluation, callbacks)


def train_defender_on_table(
    defender: Defender,
    train: SFTTable,
    config: DefenderSFTConfig,
    output_dir: str | Path,
    evaluation: SFTTable | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> tuple[Defender, pd.DataFrame]:
    """`train_defender_sft` on conversations already in tables (`sft_table`), in this process
    (one of several when started by `aot.defender.sft_processes`)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    model = defender.model
    if config.freeze_vision:
        for p in model.model.visual.parameters():
            p.requires_grad_(False)
    settings = dict(
        output_dir=str(output_dir),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler_type,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if evaluation is not None else "no",
        eval_steps=max(config.logging_steps, config.max_steps // 4),
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        seed=config.seed,
        data_seed=config.seed,
        assistant_only_loss=True,
        remove_unused_columns=False,
        max_length=None,
        activation_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
        # with several processes: every parameter gets a gradient, so DDP need not search the
        # graph for unused ones each step
        ddp_find_unused_parameters=False,
    )
    # `extra` may override any of these
    args = SFTConfig(**current_training_args({**settings, **config.extra}))
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **config.lora)
    collator = DenseCollator(processor=defender.processor, assistant_only_loss=True)
    # not with several processes: each would take the same idle core
    spare_cores = (
        [SpareCoreThreads(config.spare_core_threads)]
        if config.spare_core_threads and not in_distributed_run()
        else []
    )
    trainer = DenseSFTTrainer(
        model=model,
        args=args,
        train_dataset=train.dataset(),
        eval_dataset=evaluation.dataset() if evaluation is not None else None,
        processing_class=defender.processor,
        data_collator=collator,
        peft_config=peft_config,
        dense_weight=config.dense_weight,
        dense_loss=config.dense_loss,
        grounding_weight=config.grounding_weight,
        grounding_layer=config.grounding_layer,
        callbacks=[TimeBudget(config.time_budget_s), *spare_cores, *callbacks],
    )
    start = time.perf_counter()
    with ExitStack() as stack:
        # rope positions by row layout, for the whole run: they do not depend on the weights
        stack.enter_context(cached_rope_index(trainer.model, BoundedCache(ROPE_CACHE_BYTES)))
        if config.freeze_vision and config.feature_cache_mb:
            cache = BoundedCache(config.feature_cache_mb * 2**20)
            stack.enter_context(cached_image_features(trainer.model, cache, trainer._tap.capture))
        trainer.train()
    logger.info(
        "Defender SFT: %d steps in %.0f s", trainer.state.global_step, time.perf_counter() - start
    )
    trainer.remove_taps()
    if in_distributed_run():
        check_replicas_agree(trainer)
    trained = trainer.model
    if config.lora:
        trained = trained.merge_and_unload()
    for p in trained.parameters():
        p.requires_grad_(True)
    log = pd.DataFrame([r for r in trainer.state.log_history if "loss" in r or "eval_loss" in r])
    return Defender(trained.eval(), defender.processor), without_wall_clock(log)


@torch.no_grad()
def evaluate_loss(
    defender: Defender, examples: Sequence[SFTExample], batch_size: int = 16
) -> float:
    """Mean assistant-token loss of `defender` on `examples` (the SFT objective, no dense term)."""
    if not examples:
        raise ValueError("evaluate_loss: no examples")
    collator = DenseCollator(processor=defender.processor, assistant_only_loss=True)
    n_tokens = _image_tokens(defender, examples[0].image)
    rows = list(_dataset(examples, n_tokens))
    model = defender.model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collator([dict(r) for r in rows[start : start + batch_size]])
        batch.pop("dense_targets")
        batch.pop("grounding_targets")
        batch = {k: v.to(defender.device) for k, v in batch.items()}
        labels = batch["labels"]
        n = int((labels[:, 1:] != -100).sum())
        total += float(model(**batch).loss) * n
        count += n
    return total / max(count, 1)
