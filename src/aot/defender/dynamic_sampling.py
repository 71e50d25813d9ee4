"""DAPO dynamic sampling on top of TRL's GRPOTrainer (hand-written: TRL has none).

DAPO (Yu et al. 2025, arXiv 2503.14476, section 3.2) and the AOT recipe (EasyR1's
`algorithm.online_filtering`, aot-method.md section 4.2) drop every prompt group whose mean
reward is <= 0.01 or >= 0.99 -- all wrong or all right, so every advantage is zero -- and then
*refill* the batch: more prompts are drawn and rolled out until the batch holds the wanted number
of informative groups. TRL 1.16's GRPOTrainer has no such option: it only logs
`frac_reward_zero_std` (huggingface/trl#3708 is open; the PR #3758 that added resampling was
closed in favour of the async trainer, which needs vLLM). Masking zero-advantage groups out of the
loss is not the same thing: the step then trains on fewer groups, and on none at all once the
policy is good. So this module adds it.

`informative_groups` and `InformativeBatch` are the pure filter and accumulator (no model, no
torch). `DynamicSamplingGRPOTrainer` hooks them into `_generate_and_score_completions`, the one
TRL method that turns a generation batch of prompts into scored, padded rollouts: it calls TRL's
own method once per round (the dataloader's batch first, then refill draws), keeps the
informative groups of each round and merges them into one batch of `groups_per_step` groups. When
`max_tries` rounds are not enough it logs a warning and trains on what it has; with no informative
group at all the step's update is skipped (logged; the optimizer sees no gradient at all, so
AdamW's momentum does not move the weights either).

Advantages stay TRL's, computed within each round; with `scale_rewards="group"` (the DAPO/GRPO
setting) a group's advantages depend on that group alone, so merging rounds changes nothing.

Several processes (`accelerate launch`, `aot.distributed`): each process fills its own batch of
`groups_per_step` groups from its own prompts, and all processes roll out in lockstep (TRL's
rollout gathers rewards across processes, and sharded models generate collectively). TRL hands
every process the rewards of all processes, so every process knows every process's batch and
they all stop after the same round: when every batch is full or after `max_tries` rounds.
Refills draw `groups_per_step` fresh prompts per process from one shared, seeded permutation
(prompts drawn anywhere in this step are skipped), so processes never share a prompt. A process
left without any informative group trains on a zero-weight batch (its backward still takes part
in the gradient all-reduce); the update is skipped only when no process has one. The loss
normaliser (`num_items_in_batch`) counts the kept tokens of all processes, as TRL's does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from trl import GRPOTrainer
from trl.trainer.utils import (
    RepeatSampler,
    split_pixel_values_by_grid,
    unsplit_pixel_values_by_grid,
)

from aot.defender.distinct_examples import processing_distinct_examples_once
from aot.defender.image_cache import BoundedCache, reusing_images
from aot.defender.rope_cache import ROPE_CACHE_BYTES, cached_rope_index
from aot.defender.shared_prefill import sharing_group_prefill

logger = logging.getLogger(__name__)

METRIC_PREFIX = "dapo/"


# ------------------------------------------------------------------------------ pure filter


def group_means(rewards: Sequence[float] | np.ndarray, group_size: int) -> np.ndarray:
    """Mean reward of each group of `group_size` consecutive rollouts (NaN rewards ignored)."""
    values = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if group_size < 1 or values.size % group_size:
        raise ValueError(f"{values.size} rewards do not split into groups of {group_size}")
    groups = values.reshape(-1, group_size)
    out = np.full(groups.shape[0], np.nan)
    scored = ~np.isnan(groups).all(axis=1)
    out[scored] = np.nanmean(groups[scored], axis=1)
    return out


def informative_groups(means: Sequence[float] | np.ndarray, low: float, high: float) -> np.ndarray:
    """DAPO's filter: a group is kept when `low < mean < high` (a NaN mean is never kept)."""
    means = np.asarray(means, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (means > low) & (means < high)


@dataclass
class InformativeBatch:
    """Accumulates informative groups over rollout rounds until `target` groups are held.

    `add` takes one round's rewards (groups of consecutive rollouts) and returns the indices of
    the groups it keeps from that round, in order, never more than the batch still needs.
    """

    target: int
    low: float = 0.01
    high: float = 0.99
    tries: int = 0
    sampled: int = 0
    filtered: int = 0
    surplus: int = 0
    kept: list[tuple[int, int]] = field(default_factory=list)  # (round, group index)

    def add(self, rewards: Sequence[float] | np.ndarray, group_size: int) -> list[int]:
        keep = informative_groups(group_means(rewards, group_size), self.low, self.high)
        informative = np.flatnonzero(keep).tolist()
        taken = informative[: self.missing]
        self.sampled += keep.size
        self.filtered += int(keep.size - len(informative))
        self.surplus += len(informative) - len(taken)
        self.kept.extend((self.tries, g) for g in taken)
        self.tries += 1
        return taken

    @property
    def missing(self) -> int:
        return self.target - len(self.kept)

    @property
    def full(self) -> bool:
        return self.missing <= 0

    @property
    def frac_filtered(self) -> float:
        return self.filtered / self.sampled if self.sampled else 0.0


# ---------------------------------------------------------------------- merging rollouts

_LEFT_PADDED = {"prompt_ids": "pad", "prompt_mask": 0}
_RIGHT_PADDED = {
    "completion_ids": "pad",
    "completion_mask": 0,
    "old_per_token_logps": 0.0,
    "ref_per_token_logps": 0.0,
    "sampling_per_token_logps": 0.0,
    "tool_mask": 1,
}
_PROMPT_AND_COMPLETION = ("token_type_ids", "mm_token_type_ids")
_PER_ROW_LISTS = ("pixel_values", "image_grid_thw", "num_images", "image_sizes", "num_tiles")
SKIP_KEY = "dapo_skip"
INDEX_COLUMN = "dataset_index"  # optional column: lets refills skip the prompts already drawn


def _pad_rows(tensors: list[torch.Tensor], value: float, side: str) -> torch.Tensor:
    width = max(t.size(1) for t in tensors)
    out = []
    for t in tensors:
        extra = width - t.size(1)
        if extra:
            filler = t.new_full((t.size(0), extra), value)
            t = torch.cat([filler, t] if side == "left" else [t, filler], dim=1)
        out.append(t)
    return torch.cat(out, dim=0)


def merge_rollouts(
    parts: Sequence[tuple[dict[str, Any], Sequence[int]]], pad_token_id: int
) -> dict[str, Any]:
    """Concatenates the chosen rows of several `_generate_and_score_completions` outputs.

    Each part is (output, row indices); outputs must be split per row first
    (`split_pixel_values_by_grid`). Prompts stay left-padded and completions right-padded to the
    widest part; `num_items_in_batch` is recounted. Unknown per-token keys raise, so a TRL
    upgrade that adds one fails loudly instead of training on misaligned tensors.
    """
    if not parts:
        raise ValueError("merge_rollouts: nothing to merge")
    keys = list(parts[0][0])
    merged: dict[str, Any] = {}
    for key in keys:
        if key == "num_items_in_batch":
            continue
        values = [out[key] for out, _ in parts]
        if values[0] is None:
            merged[key] = None
        elif key in _PER_ROW_LISTS or isinstance(values[0], list):
            merged[key] = [v[i] for v, (_, rows) in zip(values, parts, strict=True) for i in rows]
        elif key in _LEFT_PADDED or key in _RIGHT_PADDED:
            fill = (_LEFT_PADDED | _RIGHT_PADDED)[key]
            fill = pad_token_id if fill == "pad" else fill
            side = "left" if key in _LEFT_PADDED else "right"
            merged[key] = _pad_rows(
                [v[list(rows)] for v, (_, rows) in zip(values, parts, strict=True)], fill, side
            )
        elif key in _PROMPT_AND_COMPLETION:
            prompt_parts, completion_parts = [], []
            for v, (out, rows) in zip(values, parts, strict=True):
                width = out["prompt_ids"].size(1)
                prompt_parts.append(v[list(rows), :width])
                completion_parts.append(v[list(rows), width:])
            merged[key] = torch.cat(
                [_pad_rows(prompt_parts, 0, "left"), _pad_rows(completion_parts, 0, "right")], dim=1
            )
        elif isinstance(values[0], torch.Tensor) and values[0].ndim == 1:
            merged[key] = torch.cat(
                [v[list(rows)] for v, (_, rows) in zip(values, parts, strict=True)]
            )
        else:
            raise ValueError(f"merge_rollouts: do not know how to merge rollout key {key!r}")
    mask = merged["completion_mask"]
    if merged.get("tool_mask") is not None:
        mask = mask * merged["tool_mask"]
    merged["num_items_in_batch"] = mask.sum()
    return merged


# ------------------------------------------------------------------------------ trainer


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler with an order that depends on (seed, epoch) only.

    TRL's sampler draws each epoch's permutation from one generator that runs on across epochs
    and is in no checkpoint, so a run resumed after its first epoch would see another order
    than the uninterrupted run. The Trainer calls `set_epoch` before each pass.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):  # noqa: ANN204
        if self.shuffle:
            state = np.random.SeedSequence([int(self.seed or 0), self.epoch]).generate_state(1)
            self.generator = torch.Generator().manual_seed(int(state[0]))
        self.epoch += 1  # the next pass, unless set_epoch says otherwise
        return super().__iter__()


class _Prepared:
    """A batch that `_prepare_inputs` already turned into rollouts (passed through untouched)."""

    def __init__(self, batch: dict[str, Any]) -> None:
        self.batch = batch


class DynamicSamplingGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with DAPO dynamic sampling: filter uninformative groups, then refill.

    Each training step wants `groups_per_step` groups (the dataloader's generation batch holds
    exactly that many prompts). Round 1 rolls out the dataloader's batch; each further round (up
    to `max_tries` rounds in all) draws `groups_per_step` prompts of the training set not yet
    drawn in this step (known by the `dataset_index` column when the dataset has one), with a
    generator seeded by (`sampling_seed`, global step, round) so a resumed run draws the same
    prompts. Rounds stop as soon as the batch is full; extra informative groups are dropped.
    With several processes `groups_per_step` is per process (see the module doc).
    """

    def __init__(
        self,
        *args: Any,
        groups_per_step: int,
        filter_low: float = 0.01,
        filter_high: float = 0.99,
        max_tries: int = 4,
        sampling_seed: int = 0,
        dynamic_sampling: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.groups_per_step = groups_per_step
        self.filter_low = filter_low
        self.filter_high = filter_high
        self.max_tries = max_tries
        self.sampling_seed = sampling_seed
        self.dynamic_sampling = dynamic_sampling
        self._last_rewards_per_func: torch.Tensor | None = None
        self._short_steps = 0  # steps trained on fewer groups than groups_per_step
        self._skipped_steps = 0  # steps without any informative group: no update
        # rope positions by row layout, for the whole run: they do not depend on the weights
        self._rope_rows = BoundedCache(ROPE_CACHE_BYTES)
        processes = self.accelerator.num_processes
        expected = groups_per_step * self.num_generations * processes
        if self.args.generation_batch_size != expected:
            raise ValueError(
                f"generation batch of {self.args.generation_batch_size} rollouts, expected "
                f"groups_per_step x num_generations x processes = {expected}"
            )

    def _get_train_sampler(self, dataset: Any = None) -> EpochSeededRepeatSampler:
        return EpochSeededRepeatSampler(
            data_source=self.train_dataset if dataset is None else dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )

    # -- rewards of the last round, as TRL combines them (weighted sum over reward functions)
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # noqa: ANN001
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        self._last_rewards_per_func = rewards_per_func.detach()
        return rewards_per_func

    def _last_rewards(self) -> np.ndarray:
        """Rewards of the last round's rollouts of every process, process by process (TRL
        gathers them before computing advantages)."""
        per_func = self._last_rewards_per_func
        assert per_func is not None
        weights = self.reward_weights.to(per_func.device)
        rewards = (per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan
        return rewards.float().cpu().numpy()

    def _refill_inputs(self, round_index: int, used: set[int]) -> list[dict[str, Any]]:
        """`groups_per_step` prompts not yet drawn this step (repeats only once all were).

        The draw is the same on every process (same seed, same `used`): `groups_per_step`
        prompts per process, this process takes its own share."""
        dataset = self.train_dataset
        rng = np.random.default_rng([self.sampling_seed, int(self.state.global_step), round_index])
        processes = self.accelerator.num_processes
        size = self.groups_per_step * processes
        fresh = np.array(sorted(set(range(len(dataset))) - used), dtype=np.int64)
        indices = rng.permutation(fresh)[:size].tolist()
        if len(indices) < size:
            indices += rng.choice(len(dataset), size=size - len(indices)).tolist()
        used.update(indices)
        start = self.accelerator.process_index * self.groups_per_step
        rows = [dataset[int(i)] for i in indices[start : start + self.groups_per_step]]
        return [dict(row) for row in rows for _ in range(self.num_generations)]

    def _used_indices(self, inputs: list[dict[str, Any]]) -> set[int]:
        """Dataset indices of the prompts every process drew for this step."""
        local = sorted({int(x[INDEX_COLUMN]) for x in inputs if INDEX_COLUMN in x})
        if self.accelerator.num_processes == 1:
            return set(local)
        from accelerate.utils import gather_object

        return {int(i) for i in gather_object(local)}

    def _global_items(self, mask: torch.Tensor) -> torch.Tensor:
        """Loss tokens of the batch over all processes (TRL's `num_items_in_batch`)."""
        count = mask.sum()
        if self.accelerator.num_processes == 1:
            return count
        return self.accelerator.gather(count.reshape(1)).sum()

    def _rollout(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's rollout and scoring of one batch. It sees each prompt's image 2 x
        num_generations times: the processor makes its patches and the vision tower its
        features once while no gradient is recorded. The cache lives for this batch only, so
        its memory is the batch's, and the weights cannot change while it lives. The rest of
        the processor's work runs once per distinct prompt
        (`aot.defender.distinct_examples`). TRL also generates from num_generations copies of
        each prompt: each is encoded once (`aot.defender.shared_prefill.sharing_group_prefill`;
        the same completions)."""
        generator = self.accelerator.unwrap_model(self.model_wrapped)
        with (
            reusing_images(self.model, self.processing_class, {}),
            processing_distinct_examples_once(self.processing_class),
            sharing_group_prefill(generator, self.num_generations),
        ):
            return super()._generate_and_score_completions(inputs)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if not self.model.training or not self.dynamic_sampling:
            return self._rollout(inputs)
        group = self.num_generations
        processes = self.accelerator.num_processes
        rank = self.accelerator.process_index
        # Every process's batch, tracked on every process from the gathered rewards, so all
        # agree on when to stop (the rollouts are collective).
        batches = [
            InformativeBatch(self.groups_per_step, self.filter_low, self.filter_high)
            for _ in range(processes)
        ]
        batch = batches[rank]
        parts: list[tuple[dict[str, Any], list[int]]] = []
        sampled_rewards: list[np.ndarray] = []
        kept_rewards: list[np.ndarray] = []
        kept_lengths: list[float] = []
        output: dict[str, Any] = {}
        used = self._used_indices(inputs)
        tries = 0
        while tries < self.max_tries and not all(b.full for b in batches):
            round_inputs = inputs if tries == 0 else self._refill_inputs(tries, used)
            output = self._rollout(round_inputs)
            everyone = self._last_rewards().reshape(processes, -1)
            tries += 1
            for p, b in enumerate(batches):
                if b.full:
                    continue
                taken = b.add(everyone[p], group)
                if p != rank:
                    continue
                rewards = everyone[p]
                sampled_rewards.append(rewards)
                if taken:
                    rows = [g * group + k for g in taken for k in range(group)]
                    parts.append((split_pixel_values_by_grid(output), rows))
                    kept_rewards.append(rewards[rows])
                    lengths = output["completion_mask"][rows].sum(dim=1).float()
                    kept_lengths.extend(lengths.tolist())
        step = self.state.global_step + 1
        self._log_step(batch, sampled_rewards, kept_rewards, kept_lengths)
        if not parts:
            nowhere = not any(b.kept for b in batches)
            if nowhere:
                self._skipped_steps += 1
                logger.log(
                    logging.WARNING if self._skipped_steps == 1 else logging.INFO,
                    "DAPO step %d: no informative group in %d tries (%d groups sampled, all with "
                    "mean reward <= %g or >= %g); skipping the update",
                    step,
                    tries,
                    sum(b.sampled for b in batches),
                    self.filter_low,
                    self.filter_high,
                )
            else:
                logger.warning(
                    "DAPO step %d: no informative group on process %d in %d tries; it trains "
                    "on a zero-weight batch (other processes have some)",
                    step,
                    rank,
                    tries,
                )
            output["completion_mask"] = torch.zeros_like(output["completion_mask"])
            output["advantages"] = torch.zeros_like(output["advantages"])
            output["num_items_in_batch"] = self._global_items(output["completion_mask"])
            if nowhere:
                output[SKIP_KEY] = torch.tensor(True)
            return output
        if not batch.full:
            self._short_steps += 1
            if self._short_steps == 1:  # usual when most prompts are answered all right
                logger.warning(
                    "DAPO step %d: only %d/%d informative groups after %d tries (max_tries); "
                    "training on what there is. Each step's INFO line gives its count",
                    step,
                    len(batch.kept),
                    batch.target,
                    batch.tries,
                )
        merged = merge_rollouts(parts, pad_token_id=self._tokenizer.pad_token_id)
        if processes > 1:
            mask = merged["completion_mask"]
            if merged.get("tool_mask") is not None:
                mask = mask * merged["tool_mask"]
            merged["num_items_in_batch"] = self._global_items(mask)
        return unsplit_pixel_values_by_grid(merged)

    def _log_step(
        self,
        batch: InformativeBatch,
        sampled: list[np.ndarray],
        kept: list[np.ndarray],
        kept_lengths: list[float],
    ) -> None:
        metrics = self._metrics["train"]
        kept_all = np.concatenate(kept) if kept else np.array([np.nan])
        sampled_all = np.concatenate(sampled)
        values = {
            "tries": batch.tries,
            "groups_sampled": batch.sampled,
            "groups_kept": len(batch.kept),
            "frac_filtered": batch.frac_filtered,
            "skipped": float(not batch.kept),
            "sampled_reward_mean": float(np.nanmean(sampled_all)),
            "reward_mean": float(np.nanmean(kept_all)) if kept else float("nan"),
            "reward_std": float(np.nanstd(kept_all, ddof=1)) if kept_all.size > 1 else float("nan"),
            "completion_length": float(np.mean(kept_lengths)) if kept_lengths else float("nan"),
        }
        for name, value in values.items():
            metrics[METRIC_PREFIX + name].append(float(value))
        logger.info(
            "DAPO step %d: %d/%d informative groups, %d tries, %.0f%% of %d groups filtered, "
            "batch reward %.3f +- %.3f",
            self.state.global_step + 1,
            len(batch.kept),
            batch.target,
            batch.tries,
            100 * batch.frac_filtered,
            batch.sampled,
            values["reward_mean"],
            values["reward_std"],
        )

    # -- resuming: transformers' Trainer reloads checkpoint weights with a plain
    # `load_state_dict`, which skips the key conversion Qwen2.5-VL needs (the checkpoint says
    # `visual.*` / `model.layers.*`, the module `model.visual.*` / `model.language_model.*`), so
    # a resumed run would silently keep its fresh weights (huggingface/transformers#43701).
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        model = self.model if model is None else model
        folder = Path(resume_from_checkpoint)
        full = (folder / "model.safetensors").exists() or (
            folder / "model.safetensors.index.json"
        ).exists()
        if not full or hasattr(model, "peft_config"):
            super()._load_from_checkpoint(resume_from_checkpoint, model=model)
            return
        dtype = next(model.parameters()).dtype
        saved = type(model).from_pretrained(folder, dtype=dtype, use_safetensors=True)
        model.load_state_dict(saved.state_dict(), strict=True)
        logger.info("Loaded the model weights of %s", folder)

    # -- skipping the update of a step without informative groups
    def _prepare_inputs(self, generation_batch: Any) -> dict[str, Any]:
        if isinstance(generation_batch, _Prepared):
            return generation_batch.batch
        return super()._prepare_inputs(generation_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001
        model.train()
        with cached_rope_index(self.model, self._rope_rows):  # rollouts and loss
            prepared = self._prepare_inputs(inputs)
            if SKIP_KEY in prepared:
                # No backward at all: every gradient stays None, so the optimizer leaves every
                # weight (and its moments) alone; the step still counts.
                self._step += 1
                return torch.zeros((), device=self.accelerator.device)
            return super().training_step(model, _Prepared(prepared), num_items_in_batch)
