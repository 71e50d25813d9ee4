"""Preprocess each distinct image once while a trainer rolls out (hand-written: transformers has
no cache for image processors).

TRL's GRPOTrainer runs the Qwen2.5-VL processor twice per rollout batch (for `generate`, then
again to score the completions), on every copy of a prompt's image (`num_generations` copies),
and DAPO's dynamic sampling rolls out up to `max_tries` batches a step. On the tiny default that
was about a fifth of the DAPO node's time under cProfile (9.2 of 44 s; README, Measurements):
each image turned into the same patches 2 x `num_generations` times. `cached_preprocessing`
memoises `image_processor.preprocess` per image content for the duration of a `with` block; the
patches are exactly the ones the processor makes for that image alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature

Cached = tuple[torch.Tensor, torch.Tensor]


def image_key(image: Any) -> str | None:
    """A content key for a PIL image (mode, size and pixels); None for anything else."""
    if not isinstance(image, Image.Image):
        return None
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    return digest.hexdigest()


def _flat_images(images: Any) -> list[Any]:
    if isinstance(images, (list, tuple)):
        return [leaf for item in images for leaf in _flat_images(item)]
    return [images]


@contextmanager
def cached_preprocessing(
    image_processor: Any, cache: MutableMapping[tuple[str, str], Cached]
) -> Iterator[None]:
    """Within the block, `image_processor(images, ...)` processes each image it has not seen
    (same content, same keyword arguments) alone and reuses the cached patches otherwise.

    Calls it cannot serve image by image (anything but PIL images, or `return_tensors` other
    than "pt" or None) go to the processor unchanged. The instance attribute is removed on exit,
    so the processor saves and pickles as before.
    """
    original = image_processor.preprocess

    def preprocess(images: Any, *args: Any, **kwargs: Any) -> BatchFeature:
        flat = _flat_images(images)
        keys = [image_key(image) for image in flat]
        tensors = kwargs.get("return_tensors")
        if args or not flat or None in keys or tensors not in (None, "pt"):
            return original(images, *args, **kwargs)
        options = repr(sorted((k, repr(v)) for k, v in kwargs.items() if k != "return_tensors"))
        for key, image in zip(keys, flat, strict=True):
            if (key, options) not in cache:
                out = original([image], **{**kwargs, "return_tensors": "pt"})
                cache[(key, options)] = (out["pixel_values"], out["image_grid_thw"])
        hits = [cache[(key, options)] for key in keys]
        data = {
            "pixel_values": torch.cat([pixels for pixels, _ in hits]),
            "image_grid_thw": torch.cat([grid for _, grid in hits]),
        }
        return BatchFeature(data=data, tensor_type=tensors)

    image_processor.preprocess = preprocess
    try:
        yield
    finally:
        del image_processor.preprocess
