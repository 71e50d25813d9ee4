"""Edit-quality metrics: how close the Attacker's edits come to the world's own filler.

Used to report the cold start and, later, to catch Flow-GRPO reward hacking (an RL policy can
raise its reward by degrading objects into noise; colour and shape accuracy fall when it does).
Images are (H, W, 3) uint8 arrays or PIL images; boxes are (x0, y0, x1, y1), ends exclusive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from aot.attacker.crops import model_to_uint8, paste_back, to_crops, uint8_to_model
from aot.attacker.editing import sample_crops
from aot.attacker.pairs import EditExample, iter_edit_examples
from aot.attacker.pipeline import BoxEditPipeline
from aot.attacker.prompts import REMOVE_CLASS, class_to_edit
from aot.world import COLORS, SHAPES, WorldConfig, shape_mask

CHANGE_THRESHOLD = 40  # |gen - clean| above this in any channel marks a painted pixel
_PALETTE = np.array(list(COLORS.values()), dtype=float)
_PALETTE_NAMES = tuple(COLORS)


def _arr(image: np.ndarray | Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)


def _in_box(image: np.ndarray | Image.Image, box: Sequence[int]) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    return _arr(image)[y0:y1, x0:x1].astype(float)


def box_mse(generated: Any, target: Any, box: Sequence[int]) -> float:
    """Mean squared error inside the box, in [0, 1] RGB units."""
    return float(np.mean(((_in_box(generated, box) - _in_box(target, box)) / 255.0) ** 2))


def changed_pixels(generated: Any, clean: Any, box: Sequence[int]) -> np.ndarray:
    """(h, w) bool: box pixels the edit changed by more than ``CHANGE_THRESHOLD``."""
    diff = np.abs(_in_box(generated, box) - _in_box(clean, box))
    return (diff > CHANGE_THRESHOLD).any(axis=-1)


def colour_match(generated: Any, clean: Any, box: Sequence[int], colour: str) -> bool:
    """The palette colour nearest to the changed pixels' mean RGB is ``colour`` (False when
    nothing changed: an edit that paints nothing has no colour)."""
    fg = changed_pixels(generated, clean, box)
    if not fg.any():
        return False
    mean = _in_box(generated, box)[fg].mean(axis=0)
    return _PALETTE_NAMES[int(np.argmin(((_PALETTE - mean) ** 2).sum(axis=1)))] == colour


def shape_match(generated: Any, clean: Any, box: Sequence[int], shape: str) -> bool:
    """The changed-pixel foreground has its highest IoU with ``shape``'s mask in this box."""
    fg = changed_pixels(generated, clean, box)
    if not fg.any():
        return False
    h, w = fg.shape
    ious = [
        (fg & shape_mask(s, w, h)).sum() / max(1, (fg | shape_mask(s, w, h)).sum()) for s in SHAPES
    ]
    return SHAPES[int(np.argmax(ious))] == shape


def _to_chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1)


def _hwc(x: torch.Tensor) -> np.ndarray:
    return model_to_uint8(x).permute(1, 2, 0).numpy()


def run_edits(
    pipe: BoxEditPipeline,
    examples: Sequence[EditExample],
    steps: int = 8,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(edited images, targets passed through the crop round trip) for the examples, batched.

    The second list is the resampling ceiling: the best a perfect crop model could score.
    """
    gen = torch.Generator().manual_seed(seed)
    edited, ceiling = [], []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        images = [uint8_to_model(_to_chw(ex.source)) for ex in chunk]
        boxes = [ex.box for ex in chunk]
        ids = torch.tensor([ex.class_id for ex in chunk])
        cfg = pipe.config
        src, mask, windows = to_crops(images, boxes, cfg.crop_size, cfg.crop_scale)
        tgt, _, _ = to_crops(
            [_to_chw(ex.target) for ex in chunk], boxes, cfg.crop_size, cfg.crop_scale
        )
        crops = sample_crops(pipe.unet, pipe.scheduler, src, mask, ids, steps, gen).cpu()
        edited += [_hwc(x) for x in paste_back(images, crops, windows, boxes)]
        ceiling += [_hwc(x) for x in paste_back(images, tgt, windows, boxes)]
    return edited, ceiling


def edit_quality(
    pipe: BoxEditPipeline,
    n: int = 64,
    world_cfg: WorldConfig | None = None,
    seed: int = 999,
    steps: int = 8,
    remove_fraction: float = 0.2,
) -> dict[str, float]:
    """Scores on ``n`` held-out procedural edits (one per scene; seed apart from training's).

    ``mse_box`` / ``mse_no_edit`` / ``mse_ceiling``: add edits against the exact target, for the
    model, for copying the source, and for the target through the crop round trip. Colour and
    shape accuracy are over add edits; ``remove_mse`` (and its no-edit baseline) over removals.
    """
    world_cfg = world_cfg or WorldConfig()
    rng = np.random.default_rng(seed)
    examples = list(iter_edit_examples(rng, world_cfg, n, remove_fraction, edits_per_scene=1))
    edited, ceiling = run_edits(pipe, examples, steps, seed)
    adds = [i for i, ex in enumerate(examples) if ex.class_id != REMOVE_CLASS]
    removes = [i for i, ex in enumerate(examples) if ex.class_id == REMOVE_CLASS]

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    def mse(images: list[np.ndarray], idx: list[int]) -> float:
        return mean([box_mse(images[i], examples[i].target, examples[i].box) for i in idx])

    sources = [ex.source for ex in examples]
    edits = [class_to_edit(examples[i].class_id) for i in adds]
    return {
        "n_add": float(len(adds)),
        "mse_box": mse(edited, adds),
        "mse_no_edit": mse(sources, adds),
        "mse_ceiling": mse(ceiling, adds),
        "colour_acc": mean(
            [
                colour_match(edited[i], examples[i].source, examples[i].box, e[2])
                for i, e in zip(adds, edits, strict=True)
            ]
        ),
        "shape_acc": mean(
            [
                shape_match(edited[i], examples[i].source, examples[i].box, e[1])
                for i, e in zip(adds, edits, strict=True)
            ]
        ),
        "n_remove": float(len(removes)),
        "remove_mse": mse(edited, removes),
        "remove_mse_no_edit": mse(sources, removes),
    }
