"""Sampling ``n`` answers per prompt with the prompt encoded once (hand-written: transformers'
``generate`` copies every prompt ``num_return_sequences`` times before the prefill, and has no
option to share a prompt's prefill between its samples).

The Defender samples several answers per question in the AOT-SFT filter (K = 3), the round's
curriculum and metrics, the Attacker's reward and the strict evaluation protocol. On the tiny
default the prefill is most of a ``generate`` call (image tokens, question and options against
at most 12 answer tokens), so encoding it once instead of ``n`` times takes 0.49 of the time at
n = 3 and 0.43 at n = 5, with the same answers (`benchmarks/results/shared_prefill.md`).

How: one forward over each prompt but its last token fills a ``DynamicCache``; the cache, and
Qwen2.5-VL's multimodal rope offsets that this forward stores on the model, are repeated
``n`` times per row (each prompt's copies adjacent, as ``num_return_sequences`` lays them out);
then ``generate`` runs on the repeated prompts with that cache, so it only feeds the last prompt
token before decoding. Models without Qwen2.5-VL's ``rope_deltas`` take the plain path.

TRL's GRPO rollouts (DAPO) put each prompt ``num_generations`` times side by side in one
``generate`` call; `sharing_group_prefill` finds those runs and encodes each prompt once, with
the same completions (rollouts 2.06x raw ``generate`` on the same rows,
`benchmarks/results/dapo.md`).

The evaluation asks each question greedily and under the strict protocol (3 samples);
`generate_greedy_and_sampled` serves both from one prefill, the greedy decoding on a copy of
the cache.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from transformers import DynamicCache

# Inputs laid out per prompt token; the rest (patches, grids) are per image.
TOKEN_ALIGNED = ("input_ids", "attention_mask", "mm_token_type_ids")


def rope_owner(model: Any) -> Any | None:
    """The submodule that keeps Qwen2.5-VL's ``rope_deltas`` between a prefill and the decoding
    steps (``Qwen2_5_VLModel``, under a peft wrapper too); None if the model has none."""
    for module in model.modules():
        if hasattr(module, "rope_deltas") and hasattr(module, "get_rope_index"):
            return module
    return None


def can_share_prefill(model: Any, inputs: Mapping[str, Any], n: int) -> bool:
    """Whether `generate_with_shared_prefill` applies: several samples, a Qwen2.5-VL-style model,
    and an image per prompt (its rope offsets come from the image grid)."""
    return (
        n > 1
        and inputs.get("image_grid_thw") is not None
        and inputs["input_ids"].shape[1] > 1
        and rope_owner(model) is not None
    )


def prefill(
    model: Any, inputs: Mapping[str, torch.Tensor]
) -> tuple[DynamicCache, dict, torch.Tensor]:
    """A ``DynamicCache`` filled with each prompt but its last token, the token-aligned inputs
    and Qwen2.5-VL's rope offsets that the prefill stored (one row per prompt)."""
    owner = rope_owner(model)
    aligned = {k: v for k, v in inputs.items() if k in TOKEN_ALIGNED}
    per_image = {k: v for k, v in inputs.items() if k not in TOKEN_ALIGNED}
    cache = DynamicCache(config=model.config)
    owner.rope_deltas = None  # computed afresh by the prefill below
    model(
        **{k: v[:, :-1] for k, v in aligned.items()},
        **per_image,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    if owner.rope_deltas is None:
        raise RuntimeError("shared prefill: the model did not store its rope offsets")
    return cache, aligned, owner.rope_deltas


def decode_from(
    model: Any,
    cache: DynamicCache,
    aligned: Mapping[str, torch.Tensor],
    rope_deltas: torch.Tensor,
    n: int,
    generate: Callable[..., Any] | None,
    gen_kwargs: Mapping[str, Any],
) -> torch.Tensor:
    """``generate`` from a filled ``cache`` (changed in place), each prompt repeated ``n``
    times (adjacent)."""
    if n > 1:
        cache.batch_repeat_interleave(n)
    rope_owner(model).rope_deltas = rope_deltas.repeat_interleave(n, dim=0)
    repeated = {k: v.repeat_interleave(n, dim=0) for k, v in aligned.items()}
    gen_kwargs = {**gen_kwargs, "num_return_sequences": 1}
    return (generate or model.generate)(**repeated, past_key_values=cache, **gen_kwargs)


@torch.inference_mode()
def generate_with_shared_prefill(
    model: Any,
    inputs: Mapping[str, torch.Tensor],
    n: int,
    *,
    generate: Callable[..., Any] | None = None,
    **gen_kwargs: Any,
) -> torch.Tensor:
    """``model.generate(**inputs, num_return_sequences=n, **gen_kwargs)`` with each prompt's
    prefill computed once; returns the same layout: ``n`` adjacent rows per prompt, prompt
    tokens first. Check `can_share_prefill` first. ``generate``: the decoding call to use
    (default ``model.generate``; `sharing_group_prefill` passes the unpatched one)."""
    cache, aligned, deltas = prefill(model, inputs)
    return decode_from(model, cache, aligned, deltas, n, generate, gen_kwargs)


@torch.inference_mode()
def generate_greedy_and_sampled(
    model: Any,
    inputs: Mapping[str, torch.Tensor],
    n: int,
    *,
    greedy_kwargs: Mapping[str, Any],
    sample_kwargs: Mapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """A greedy answer and ``n`` samples per prompt from one prefill: (``generate`` with
    ``greedy_kwargs``, ``generate_with_shared_prefill(..., n, **sample_kwargs)``) in one.

    The evaluation asks every question greedily and under the strict protocol; this encodes
    its prompt once for both. The greedy decoding runs on a copy of the cache and draws no
    random numbers, so the samples are those a sampling-only call makes after the same
    ``torch.manual_seed``.
    """
    cache, aligned, deltas = prefill(model, inputs)
    greedy = decode_from(model, copy.deepcopy(cache), aligned, deltas, 1, None, greedy_kwargs)
    sampled = decode_from(model, cache, aligned, deltas, n, None, sample_kwargs)
    return greedy, sampled


def group_representatives(inputs: Mapping[str, Any], group: int) -> dict[str, torch.Tensor] | None:
    """The first row of each run of ``group`` identical adjacent prompts (same tokens, same
    image patches), or None when ``inputs`` is not made of such runs, one image per prompt."""
    ids, grid, pixels = (inputs.get(k) for k in ("input_ids", "image_grid_thw", "pixel_values"))
    if group < 2 or ids is None or grid is None or pixels is None:
        return None
    rows = ids.shape[0]
    known = {*TOKEN_ALIGNED, "image_grid_thw", "pixel_values"}
    if (
        rows % group
        or grid.shape[0] != rows
        or any(isinstance(v, torch.Tensor) and k not in known for k, v in inputs.items())
    ):
        return None
    aligned = {k: inputs[k] for k in TOKEN_ALIGNED if k in inputs}
    for tensor in aligned.values():
        runs = tensor.reshape(rows // group, group, -1)
        if not torch.equal(runs, runs[:, :1].expand_as(runs)):
            return None
    chunks = pixels.split(grid.prod(-1).tolist())
    firsts = range(0, rows, group)
    if any(not torch.equal(chunks[i], chunks[i + j]) for i in firsts for j in range(1, group)):
        return None
    return {k: v[::group] for k, v in aligned.items()} | {
        "image_grid_thw": grid[::group],
        "pixel_values": torch.cat([chunks[i] for i in firsts]),
    }


@contextmanager
def sharing_group_prefill(model: Any, group: int) -> Iterator[None]:
    """Within the block, ``model.generate`` on a batch made of runs of ``group`` identical
    adjacent prompts encodes each run's prompt once (`generate_with_shared_prefill`).

    For TRL's GRPO rollouts, which repeat each prompt ``num_generations`` times side by side and
    call ``generate`` on the whole batch. Any other batch goes to ``generate`` unchanged.
    """
    original = model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        tensors = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        firsts = None if args else group_representatives(tensors, group)
        if firsts is None or not can_share_prefill(model, firsts, group):
            return original(*args, **kwargs)
        rest = {k: v for k, v in kwargs.items() if k not in tensors}
        return generate_with_shared_prefill(model, firsts, group, generate=original, **rest)

    patched_before = "generate" in vars(model)  # already an instance attribute: restore it
    model.generate = generate
    try:
        yield
    finally:
        if patched_before:
            model.generate = original
        else:
            del model.generate
