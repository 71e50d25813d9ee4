"""Qwen2.5-VL's multimodal rope positions, computed once per row layout (hand-written:
transformers computes them afresh on every prefill, with no cache).

`Qwen2_5_VLModel.get_rope_index` walks each row of a batch in Python (group the token types,
lay out each image's 3D grid, concatenate, scatter into the padded row): 2.8 s of the default
evaluation stage in 637 calls under `bench_overhead.py --functions`, about 0.14 ms a row. A
row's positions depend only on its token types (text, image, video) where the attention mask is
set and on the grids of its images, not on its token ids; the evaluation asks a few hundred
questions of images of one size, so nearly every row's layout was seen before. Inside
`cached_rope_index` each row with images (and no videos) is looked up by that layout, a new
layout is computed by the model's own `get_rope_index` on the row alone, and the rows are put
back where the mask is set (zeros elsewhere, as the original leaves them): 0.5 to 0.6 s of the
evaluation stage then, 224 rows computed afresh (`benchmarks/results/overhead_evaluation_base.md`).
A call with videos, or with more than ``input_ids`` by position, goes to the original unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from aot.defender.shared_prefill import rope_owner

IMAGE, VIDEO = 1, 2
# Bytes of positions a model keeps (a default evaluation row is about 2 KB; a few hundred rows)
ROPE_CACHE_BYTES = 64 * 2**20


def image_runs(types: np.ndarray) -> int:
    """How many images a row holds: maximal runs of image tokens (the original takes one grid
    per run)."""
    if types.size == 0:
        return 0
    is_image = types == IMAGE
    return int(is_image[0]) + int((is_image[1:] & ~is_image[:-1]).sum())


def rope_index_by_layout(
    original: Any,
    model: Any,
    cache_: MutableMapping[tuple, tuple[torch.Tensor, int]],
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``original(model, ...)``'s positions and deltas, rows served from ``cache_``. Other
    keyword arguments (`generate` passes all its model inputs) are passed on, unused, as the
    original ignores them."""
    args = dict(
        input_ids=input_ids,
        mm_token_type_ids=mm_token_type_ids,
        image_grid_thw=image_grid_thw,
        video_grid_thw=video_grid_thw,
        second_per_grid_ts=second_per_grid_ts,
        attention_mask=attention_mask,
        **kwargs,
    )
    if (
        mm_token_type_ids is None
        or image_grid_thw is None
        or video_grid_thw is not None
        or input_ids.ndim != 2
        or input_ids.shape[0] == 0
    ):
        return original(model, **args)
    types = mm_token_type_ids.cpu().numpy()
    mask = None if attention_mask is None else attention_mask.bool()
    keep = None if mask is None else mask.cpu().numpy()
    grids = [tuple(g) for g in image_grid_thw.tolist()]
    rows: list[torch.Tensor] = []
    deltas: list[int] = []
    used = 0
    for b in range(types.shape[0]):
        row_types = types[b] if keep is None else types[b][keep[b]]
        if (row_types == VIDEO).any():
            return original(model, **args)
        count = image_runs(row_types)
        row_grids = tuple(grids[used : used + count])
        key = (row_types.dtype.str, row_types.tobytes(), row_grids)
        found = cache_.get(key)
        if found is None:
            if len(row_grids) < count:  # too few grids: the original says so
                return original(model, **args)
            row = slice(None) if mask is None else mask[b]
            positions, delta = original(
                model,
                input_ids=input_ids[b][row].unsqueeze(0),
                mm_token_type_ids=mm_token_type_ids[b][row].unsqueeze(0),
                image_grid_thw=image_grid_thw[used : used + count],
                **kwargs,
            )
            found = (positions[:, 0].clone(), int(delta.reshape(-1)[0]))
            cache_[key] = found
        rows.append(found[0])
        deltas.append(found[1])
        used += count
    position_ids = torch.zeros(3, *input_ids.shape, dtype=input_ids.dtype, device=input_ids.device)
    every = torch.cat(rows, dim=1).to(position_ids.device)
    if mask is None:
        position_ids.copy_(every.view(3, *input_ids.shape))
    else:
        position_ids[:, mask] = every
    return position_ids, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


@contextmanager
def cached_rope_index(model: Any, cache_: MutableMapping[tuple, Any]) -> Iterator[None]:
    """Within the block, the rope positions of ``model`` (a Qwen2.5-VL, under a peft wrapper
    too) come from ``cache_`` for row layouts seen before. The method is patched on the module
    instance (the model calls it as ``self.get_rope_index``, as `cached_image_features` relies on
    for ``get_image_features``) and removed on exit, so the model saves and pickles as before.
    Blocks nest: an inner block's cache serves its calls. A model without Qwen2.5-VL's rope is
    left alone."""
    owner = rope_owner(model)
    if owner is None:
        yield
        return
    outer = owner.__dict__.get("get_rope_index")  # an enclosing block's patch, if any

    def get_rope_index(
        input_ids: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        own = type(owner).get_rope_index  # the model's own, looked up per call
        if args:  # more by position: left to the original
            return own(owner, input_ids, *args, **kwargs)
        return rope_index_by_layout(own, owner, cache_, input_ids, **kwargs)

    owner.get_rope_index = get_rope_index
    try:
        yield
    finally:
        if outer is None:
            del owner.get_rope_index
        else:
            owner.get_rope_index = outer
