"""Run a VLM processor once per distinct (text, images) example of a call (hand-written:
transformers' processors have no such option).

TRL's GRPOTrainer passes every one of a prompt's `num_generations` copies through the processor,
twice per rollout batch (to tokenize the prompts for `generate`, then again for the image inputs
of the scoring forward). The patches already come from `aot.defender.image_cache`, but the rest
of the call (tokenizing the image-expanded text, the multimodal token types, tensor conversion)
still ran on each copy: 4.2 s in 176 calls of the default round's DAPO node under cProfile
(2026-12-07). `processing_distinct_examples_once` makes such a call process each distinct
example once and repeat its rows, so the outputs are the processor's own: tokenizing is per
text, padding goes to the longest text (the same set of texts either way), and each image's
patches are its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature

# Qwen2.5-VL's outputs, by what a row is: one text (token rows) or one image (patch rows)
TEXT_FIELDS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids"})
IMAGE_FIELDS = frozenset({"pixel_values", "image_grid_thw"})


def example_images(images: Any, count: int) -> list[tuple[Any, ...]] | None:
    """Each text's images as a tuple, for a call with one image list (or one image) per text;
    None for any other layout, or when a text has no image (its entry None or empty)."""
    if not isinstance(images, (list, tuple)) or len(images) != count:
        return None
    if any(item is None or (isinstance(item, (list, tuple)) and not item) for item in images):
        return None
    rows = [tuple(item) if isinstance(item, (list, tuple)) else (item,) for item in images]
    if any(isinstance(image, (list, tuple)) for row in rows for image in row):
        return None
    return rows


def _take(value: Any, rows: list[int]) -> Any:
    if isinstance(value, torch.Tensor):
        return value[torch.tensor(rows, dtype=torch.long)]
    if isinstance(value, np.ndarray):
        return value[rows]
    # copies, not shared rows: a caller that pads or edits one row in place leaves the rest
    return [list(value[i]) if isinstance(value[i], list) else value[i] for i in rows]


def _image_rows(out: BatchFeature, images_per_example: list[int], order: list[int]) -> dict:
    """The image fields of ``out`` (one entry per distinct example's images) for the examples
    in ``order``."""
    grid = out["image_grid_thw"]
    patches = out["pixel_values"].split(grid.prod(-1).tolist())
    starts = np.concatenate([[0], np.cumsum(images_per_example)]).tolist()
    image_order = [i for e in order for i in range(starts[e], starts[e + 1])]
    return {
        "pixel_values": torch.cat([patches[i] for i in image_order]),
        "image_grid_thw": grid[torch.tensor(image_order, dtype=torch.long)],
    }


def call_per_distinct_example(
    call: Any, processor: Any, images: Any = None, text: Any = None, **kwargs: Any
) -> BatchFeature:
    """``call(processor, images=..., text=..., **kwargs)`` on the distinct examples, rows
    repeated for the copies. Calls it cannot split by example (no images, a single text,
    another layout, videos or audio, outputs it does not know) go to ``call`` unchanged."""
    texts = text if isinstance(text, list) and all(isinstance(t, str) for t in text) else None
    per_example = example_images(images, len(texts)) if texts else None
    if per_example is None or kwargs.get("videos") is not None or kwargs.get("audio") is not None:
        return call(processor, images=images, text=text, **kwargs)
    # ids, not contents: the copies of a prompt hold the same image objects within the call
    keys = [
        (t, tuple(id(image) for image in row)) for t, row in zip(texts, per_example, strict=True)
    ]
    rank: dict[tuple, int] = {}  # each distinct example's row in the call on distinct ones
    first: list[int] = []  # where each distinct example first appears
    for index, key in enumerate(keys):
        if key not in rank:
            rank[key] = len(first)
            first.append(index)
    if len(first) == len(keys):
        return call(processor, images=images, text=text, **kwargs)
    out = call(
        processor,
        images=[list(per_example[i]) for i in first],
        text=[texts[i] for i in first],
        **kwargs,
    )
    tensors = all(isinstance(out.get(k), torch.Tensor) for k in IMAGE_FIELDS)
    if not tensors or not set(out.keys()) <= TEXT_FIELDS | IMAGE_FIELDS:
        return call(processor, images=images, text=text, **kwargs)
    order = [rank[key] for key in keys]
    data = {k: _take(v, order) for k, v in out.items() if k in TEXT_FIELDS}
    data.update(_image_rows(out, [len(per_example[i]) for i in first], order))
    return BatchFeature(data=data)


@cache
def _distinct_subclass(cls: type) -> type:
    def __call__(
        self: Any, images: Any = None, text: Any = None, *args: Any, **kwargs: Any
    ) -> BatchFeature:
        # cls.__call__ looked up per call, so a patch of the class's own is still honoured
        if args:  # videos or audio given by position
            return cls.__call__(self, images, text, *args, **kwargs)
        return call_per_distinct_example(cls.__call__, self, images=images, text=text, **kwargs)

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})


@contextmanager
def processing_distinct_examples_once(processor: Any) -> Iterator[None]:
    """Within the block, ``processor(images=..., text=[...])`` processes each distinct
    (text, images) example once. Python looks ``__call__`` up on the type, so the processor
    gets a subclass for the block and its own class back on exit (it saves and pickles as
    before)."""
    original = type(processor)
    processor.__class__ = _distinct_subclass(original)
    try:
        yield
    finally:
        processor.__class__ = original
