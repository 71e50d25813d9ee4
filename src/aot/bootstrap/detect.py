"""A colour + shape detector for world objects, used where no scene graph says what was drawn.

A diffusion filler cannot report what it painted, so the duplication check looks at the pixels:
connected regions close to one palette colour whose mask matches a world shape template.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from aot.world import COLORS, SHAPES, Box, shape_mask

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class Detection(NamedTuple):
    """One detected object: palette colour name, best-matching shape and pixel box."""

    color: str
    shape: str
    box: Box


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of equal shape (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def best_shape(component: np.ndarray) -> tuple[str, float]:
    """The world shape whose template, stretched over the component's box, overlaps it best."""
    h, w = component.shape
    scores = {s: mask_iou(component, shape_mask(s, w, h)) for s in SHAPES}
    shape = max(scores, key=scores.__getitem__)
    return shape, scores[shape]


def colour_mask(arr: np.ndarray, rgb: tuple[int, int, int], tolerance: int) -> np.ndarray:
    """Pixels whose every channel is within ``tolerance`` of ``rgb``.

    The default tolerance (20) is below the gap between a toned world background (channels in
    [64, 191]) and the nearest palette channel, so backgrounds never match.
    """
    return (np.abs(arr.astype(np.int16) - np.asarray(rgb, np.int16)).max(-1)) <= tolerance


def detect_objects(
    image: Image.Image | np.ndarray,
    region_mask: np.ndarray | None = None,
    tolerance: int = 20,
    min_area: int = 12,
    min_iou: float = 0.6,
) -> list[Detection]:
    """Objects (colour, shape, box) found inside ``region_mask`` (the whole image when None).

    A detection is an 8-connected component of one palette colour with at least ``min_area``
    pixels whose best shape template reaches ``min_iou``.
    """
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    region = np.ones(arr.shape[:2], bool) if region_mask is None else np.asarray(region_mask, bool)
    found: list[Detection] = []
    for color, rgb in COLORS.items():
        labels, _ = ndimage.label(colour_mask(arr, rgb, tolerance) & region, _EIGHT_CONNECTED)
        for k, window in enumerate(ndimage.find_objects(labels), start=1):
            if window is None:
                continue
            component = labels[window] == k
            if component.sum() < min_area:
                continue
            shape, iou = best_shape(component)
            if iou >= min_iou:
                ys, xs = window
                found.append(Detection(color, shape, (xs.start, ys.start, xs.stop, ys.stop)))
    return found
