"""Supervised edit pairs for the cold start: procedural ones from the world, or given quadruples.

A pair is (source crop, target crop, box mask, class id), stored as uint8 so 20 k pairs of 32 px
crops take ~120 MB less than float32 would. Procedural targets are exact: the scene graph is
edited with ``apply_edit`` and re-rendered, so an "add" target is the world's own filler and a
"remove" target is the true background behind the object.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from aot.attacker.crops import Box, model_to_uint8, to_crops, uint8_to_model
from aot.attacker.prompts import REMOVE_CLASS, object_class, prompt_to_class
from aot.world import (
    COLORS,
    SIZES,
    Edit,
    Scene,
    WorldConfig,
    apply_edit,
    find_free_box,
    sample_scene,
    shape_mask,
)
from aot.world import size_pixels as world_size_pixels

logger = logging.getLogger(__name__)

_CHUNK = 512  # full images held at once while cropping


@dataclass
class EditPairs:
    """Crops ready for ``flow_matching_loss``: uint8 (N,3,R,R) images, (N,1,R,R) masks."""

    src: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    class_ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.class_ids.shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(x0, src, mask, class_ids) for the given indices, as float tensors in [-1, 1]."""
        return (
            uint8_to_model(self.target[idx]),
            uint8_to_model(self.src[idx]),
            self.mask[idx].float(),
            self.class_ids[idx],
        )

    @staticmethod
    def concat(parts: Sequence[EditPairs]) -> EditPairs:
        return EditPairs(
            *(
                torch.cat([getattr(p, k) for p in parts])
                for k in ("src", "target", "mask", "class_ids")
            )
        )


@dataclass(frozen=True)
class EditExample:
    """One full-size edit: what the crops are cut from, and what held-out evaluation scores."""

    source: np.ndarray  # (H, W, 3) uint8
    target: np.ndarray
    box: Box
    class_id: int


def _nearest_size(side: int, image_side: int) -> str:
    return min(SIZES, key=lambda s: abs(world_size_pixels(s, image_side) - side))


def _add_example(
    rng: np.random.Generator, scene: Scene, source: np.ndarray, cfg: WorldConfig
) -> EditExample | None:
    """A random (shape, colour) added in a free box of a side between the world's sizes."""
    sides = [world_size_pixels(s, cfg.image_size) for s in cfg.sizes]
    side = int(rng.integers(min(sides), max(sides) + 1))
    box = find_free_box(scene, side, rng, gap=cfg.min_gap)
    if box is None:
        return None
    shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
    colour = cfg.colors[int(rng.integers(len(cfg.colors)))]
    apply_edit(scene, Edit("add", box, shape, colour), _nearest_size(side, cfg.image_size))
    return EditExample(
        source, paint_added(source, box, shape, colour), box, object_class(shape, colour)
    )


def paint_added(source: np.ndarray, box: Box, shape: str, colour: str) -> np.ndarray:
    """``apply_edit(scene, add).render()`` without re-rendering the scene: the added object does
    not overlap any other, and the world paints each object flat from ``shape_mask``, so painting
    it onto the source gives the same pixels (checked in the tests) at a fraction of the cost."""
    x0, y0, x1, y1 = box
    target = source.copy()
    target[y0:y1, x0:x1][shape_mask(shape, x1 - x0, y1 - y0)] = COLORS[colour]
    return target


def _remove_example(
    rng: np.random.Generator, scene: Scene, source: np.ndarray
) -> EditExample | None:
    """A random existing object removed: the target is the scene re-rendered without it."""
    if not scene.objects:
        return None
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    edited = apply_edit(scene, Edit("remove", obj.box))
    return EditExample(source, np.asarray(edited.render()), obj.box, REMOVE_CLASS)


def iter_edit_examples(
    rng: np.random.Generator,
    world_cfg: WorldConfig,
    n: int,
    remove_fraction: float = 0.2,
    edits_per_scene: int = 4,
) -> Iterator[EditExample]:
    """``n`` procedural edits; each rendered scene serves ``edits_per_scene`` independent edits
    because rendering the background dominates the cost (~1.5 ms a scene)."""
    made, scenes = 0, 0
    while made < n:
        if scenes > 10 * n + 100:
            raise RuntimeError(f"only {made} of {n} edits fit in {scenes} scenes: world too full")
        scene = sample_scene(rng, world_cfg, f"edit_{scenes:06d}")
        scenes += 1
        source = np.asarray(scene.render())
        for _ in range(min(edits_per_scene, n - made)):
            remove = rng.random() < remove_fraction
            ex = (
                _remove_example(rng, scene, source)
                if remove
                else _add_example(rng, scene, source, world_cfg)
            )
            if ex is not None:
                made += 1
                yield ex


def _chw_uint8(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1)


def examples_to_pairs(
    examples: Sequence[EditExample], crop_size: int = 32, crop_scale: float = 1.5
) -> EditPairs:
    """Crops of full-size examples; source and target share the window of their box."""
    boxes = [ex.box for ex in examples]
    src, mask, _ = to_crops(
        [_chw_uint8(ex.source) for ex in examples], boxes, crop_size, crop_scale
    )
    tgt, _, _ = to_crops([_chw_uint8(ex.target) for ex in examples], boxes, crop_size, crop_scale)
    ids = torch.tensor([ex.class_id for ex in examples], dtype=torch.long)
    return EditPairs(model_to_uint8(src), model_to_uint8(tgt), mask.to(torch.uint8), ids)


def make_edit_pairs(
    rng: np.random.Generator,
    world_cfg: WorldConfig,
    n: int,
    remove_fraction: float = 0.2,
    crop_size: int = 32,
    crop_scale: float = 1.5,
    edits_per_scene: int = 4,
) -> EditPairs:
    """``n`` procedural training pairs (a ``remove_fraction`` share are removals), cropped in
    chunks so only ``_CHUNK`` full images are held at once."""
    if n <= 0:
        raise ValueError(f"make_edit_pairs: n must be positive, got {n}")
    parts, chunk = [], []
    for ex in iter_edit_examples(rng, world_cfg, n, remove_fraction, edits_per_scene):
        chunk.append(ex)
        if len(chunk) == _CHUNK:
            parts.append(examples_to_pairs(chunk, crop_size, crop_scale))
            chunk = []
    if chunk:
        parts.append(examples_to_pairs(chunk, crop_size, crop_scale))
    return EditPairs.concat(parts)


def pairs_from_records(
    clean_images: Sequence[Image.Image],
    edited_images: Sequence[Image.Image],
    boxes: Sequence[Sequence[int]],
    prompts: Sequence[str],
    crop_size: int = 32,
    crop_scale: float = 1.5,
) -> EditPairs:
    """Pairs from (clean, edited, box, prompt) quadruples, e.g. the effective AOT-SFT pairs the
    bootstrap stage keeps, so the cold start learns to reproduce them."""
    n = len(clean_images)
    if not n == len(edited_images) == len(boxes) == len(prompts):
        raise ValueError(
            f"pairs_from_records: lengths differ (clean {n}, edited {len(edited_images)}, "
            f"boxes {len(boxes)}, prompts {len(prompts)})"
        )
    examples = []
    for clean, edited, box, prompt in zip(clean_images, edited_images, boxes, prompts, strict=True):
        a, b = np.asarray(clean.convert("RGB")), np.asarray(edited.convert("RGB"))
        if a.shape != b.shape:
            raise ValueError(f"clean and edited sizes differ: {a.shape} vs {b.shape}")
        cls = prompt_to_class(prompt)
        examples.append(EditExample(a, b, tuple(int(v) for v in box), cls))  # type: ignore[arg-type]
    return examples_to_pairs(examples, crop_size, crop_scale)
