"""Preprocess and encode each distinct image once (hand-written: transformers has no cache for
image processors or for a VLM's image features).

TRL's GRPOTrainer runs the Qwen2.5-VL processor twice per rollout batch (for `generate`, then
again to score the completions), on every copy of a prompt's image (`num_generations` copies),
and DAPO's dynamic sampling rolls out up to `max_tries` batches a step. On the tiny default that
was about a fifth of the DAPO node's time under cProfile (9.2 of 44 s; README, Measurements):
each image turned into the same patches 2 x `num_generations` times. `cached_preprocessing`
memoises `image_processor.preprocess` per image content for the duration of a `with` block; the
patches are exactly the ones the processor makes for that image alone.

`cached_image_features` does the same one step later, for the vision tower: Qwen2.5-VL's
`get_image_features` runs once per distinct patch tensor while its output can carry no gradient
(none is being recorded, or the tower is frozen: the Defender warm-up trains the LM on the same
images for several epochs with the vision tower fixed).
The evaluation keeps the features, and the decoded pictures, for a whole node in a
`BoundedCache`: an answerer that cannot give the greedy answer and the strict trials' samples
from one `generate` call answers a suite image up to 4 times (`Defender` can,
`aot.evaluation.protocols.answer_tables`). It keeps no patches (about 40 times the features'
size on the default), and `Defender.generate` runs the processor on a whole batch without
`cached_preprocessing`, since the evaluation's batches hold distinct images.

A cached image's features are the ones it got in the batch that first saw it. That is
bit-for-bit what it would get in any other batch as long as the vision tower is batch-invariant;
on the 2-core CPU, with the tiny default, it is (an image's features alone and within batches of
32 are `torch.equal`), so the pipelines' outputs are unchanged by the cache. Kernels that are
not batch-invariant (some GPU attention and GEMM paths) can change the last bits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import xxhash
from PIL import Image
from transformers import BatchFeature
from transformers.modeling_outputs import BaseModelOutputWithPooling

Cached = tuple[torch.Tensor, torch.Tensor]


def nbytes(value: Any) -> int:
    """Bytes held by a tensor, a PIL image, or a tuple or list of them (0 for anything else)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Image.Image):
        return value.width * value.height * len(value.getbands())
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    return 0


class BoundedCache(dict):
    """A dict that stops taking new entries once its values hold ``max_bytes``.

    No eviction, on purpose: the evaluation passes over the same images in the same order up to
    four times, and under that access pattern a least-recently-used cache smaller than the pass
    misses every time, while keeping the first entries hits them on every pass.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        if max_bytes < 0:
            raise ValueError(f"BoundedCache: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        if key in self:
            return
        size = nbytes(value)
        if self.bytes + size <= self.max_bytes:
            super().__setitem__(key, value)
            self.bytes += size


def image_key(image: Any) -> str | None:
    """A content key for a PIL image (mode, size and pixels); None for anything else."""
    if not isinstance(image, Image.Image):
        return None
    digest = xxhash.xxh3_128(image.tobytes())
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
        hits: list[Cached] = []
        for key, image in zip(keys, flat, strict=True):
            hit = cache.get((key, options))
            if hit is None:
                out = original([image], **{**kwargs, "return_tensors": "pt"})
                hit = (out["pixel_values"], out["image_grid_thw"])
                cache[(key, options)] = hit  # a full BoundedCache declines it
            hits.append(hit)
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


def tensor_key(pixels: torch.Tensor, grid: torch.Tensor) -> str:
    """A content key for one image's patches (values, dtype, shape and grid)."""
    data = pixels.detach().contiguous().cpu()
    digest = xxhash.xxh3_128(data.view(torch.uint8).numpy())
    digest.update(f"{data.dtype}{tuple(data.shape)}{grid.tolist()}".encode())
    return digest.hexdigest()


def vision_owner(model: Any) -> Any:
    """The submodule whose ``get_image_features`` encodes images for ``forward`` and
    ``generate`` (Qwen2.5-VL's ``Qwen2_5_VLModel``; under a peft wrapper too); None if none."""
    for module in model.modules():
        if hasattr(type(module), "get_image_features") and hasattr(module, "visual"):
            return module
    return None


def carries_gradient(visual: Any, pixel_values: torch.Tensor) -> bool:
    """Whether the vision tower's output on ``pixel_values`` would be part of a gradient."""
    if not torch.is_grad_enabled():
        return False
    return pixel_values.requires_grad or any(p.requires_grad for p in visual.parameters())


@contextmanager
def cached_image_features(
    model: Any,
    cache: MutableMapping[Any, Any],
    on_features: Callable[[torch.Tensor], None] | None = None,
) -> Iterator[None]:
    """Within the block, the model encodes each distinct image (same patches, same grid) once
    while its features can carry no gradient, and reuses its features otherwise.

    Only valid while the vision tower's weights do not change: callers keep a cache for one
    rollout batch (DAPO), one answer batch, one frozen model (evaluation), or one training run
    with the tower frozen (the warm-up). Calls whose features would carry a gradient, or that
    ask for more than the features (hidden states, attentions), go to the model unchanged.

    A cache hit skips the vision tower's forward, and with it any hook on it. ``on_features``
    is called with the merged image tokens of the whole call, in image order (what the tower's
    ``pooler_output`` would have been), each time the features come from this block: the
    warm-up's dense loss reads them there (`aot.defender.dense.VisionTap.capture`). Blocks nest.
    """
    owner = vision_owner(model)
    if owner is None:
        yield
        return
    original = owner.get_image_features
    outer = owner.__dict__.get("get_image_features")  # an enclosing block's patch, if any

    def get_image_features(
        pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **kwargs: Any
    ) -> Any:
        extra = {k for k in kwargs if k != "return_dict"}
        if carries_gradient(owner.visual, pixel_values) or extra or image_grid_thw is None:
            return original(pixel_values, image_grid_thw, **kwargs)
        sizes = image_grid_thw.prod(-1).tolist()
        chunks = pixel_values.split(sizes)
        keys = [(tensor_key(c, g), "features") for c, g in zip(chunks, image_grid_thw, strict=True)]
        features = [cache.get(key) for key in keys]
        todo = list(dict.fromkeys(key for key, f in zip(keys, features, strict=True) if f is None))
        if todo:
            first = [keys.index(key) for key in todo]  # duplicates within the call encoded once
            if len(first) == len(keys):
                out = original(pixel_values, image_grid_thw, **kwargs)
            else:
                batch = torch.cat([chunks[i] for i in first])
                out = original(batch, image_grid_thw[first], **kwargs)
            fresh = dict(zip(todo, out.pooler_output, strict=True))
            for key, value in fresh.items():
                # a copy, not a view, so the batch's tensor can be freed (a full cache declines it)
                cache[key] = value.clone()
            features = [fresh[k] if f is None else f for k, f in zip(keys, features, strict=True)]
        if on_features is not None:
            on_features(torch.cat(features))
        return BaseModelOutputWithPooling(pooler_output=tuple(features))

    owner.get_image_features = get_image_features
    try:
        yield
    finally:
        if outer is None:
            del owner.get_image_features
        else:
            owner.get_image_features = outer


@contextmanager
def reusing_images(model: Any, processor: Any, cache: MutableMapping[Any, Any]) -> Iterator[None]:
    """`cached_image_features` on the model and `cached_preprocessing` on the processor's image
    processor, both with ``cache``: for a short-lived block in which the same images come back
    (a DAPO rollout batch, where TRL processes every copy of a prompt's image, twice).

    Not for a long-lived cache: an image's patches are about 40 times the size of its features
    on the default, so they would fill a bounded cache long before the features would.
    """
    with ExitStack() as stack:
        image_processor = getattr(processor, "image_processor", None)
        if image_processor is not None:
            stack.enter_context(cached_preprocessing(image_processor, cache))
        stack.enter_context(cached_image_features(model, cache))
        yield
