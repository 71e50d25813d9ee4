"""Crop windows around edit boxes, and pasting edited crops back inside the boxes only.

Hand-written (diffusers has no box-crop inpainting helper). Working on a small square window
around the box, resized to a fixed ``crop_size``, is what made the CPU Attacker trainable in
minutes (design A in ``shared/notes/exp-attacker-editor.md``). Image tensors are (3, H, W) floats
in [-1, 1], the model's value range.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Box = tuple[int, int, int, int]  # x0, y0, x1, y1; x1 and y1 exclusive
_EPS = 1e-6


def check_box(box: Sequence[int], width: int, height: int) -> Box:
    """Four ints of a non-empty box inside the image; ValueError names the box otherwise."""
    if len(box) != 4:
        raise ValueError(f"a box needs 4 ints (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box {tuple(box)} is empty or not inside the {width}x{height} image")
    return (x0, y0, x1, y1)


def crop_window(box: Box, width: int, height: int, scale: float) -> Box:
    """Square window of ``scale`` x the box's long side, centred on it, shifted into the image.

    The window always contains the box; it is clipped to the image's short side when needed.
    """
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0, min(round(scale * max(x1 - x0, y1 - y0)), width, height))
    wx = min(max(round((x0 + x1 - side) / 2), 0), width - side)
    wy = min(max(round((y0 + y1 - side) / 2), 0), height - side)
    return (wx, wy, wx + side, wy + side)


def box_mask_in_crop(box: Box, window: Box, crop_size: int) -> torch.Tensor:
    """(1, R, R) float mask of crop pixels that overlap the box at all.

    Overlap (not centre-inside) so that every box pixel, resampled back from the crop, reads
    generated values; a thin seam of source-context pixels is generated too.
    """
    rel = (box[0] - window[0], box[1] - window[1], box[2] - window[0], box[3] - window[1])
    return _relative_mask(rel, window[2] - window[0], crop_size).clone()


@lru_cache(maxsize=4096)
def _relative_mask(rel: Box, side: int, crop_size: int) -> torch.Tensor:
    """Cached: training data has few distinct (box offset, window side) combinations."""
    edges = torch.arange(crop_size + 1, dtype=torch.float64) * side / crop_size
    lo, hi = edges[:-1], edges[1:]
    cols = (lo < rel[2] - _EPS) & (hi > rel[0] + _EPS)
    rows = (lo < rel[3] - _EPS) & (hi > rel[1] + _EPS)
    return (rows[:, None] & cols[None, :]).float()[None]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear with antialiasing, so downsampled crops average rather than alias."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _window(image: torch.Tensor, window: Box) -> torch.Tensor:
    return image[:, window[1] : window[3], window[0] : window[2]]


def _as_model(x: torch.Tensor) -> torch.Tensor:
    return uint8_to_model(x) if x.dtype == torch.uint8 else x.float()


def _like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return model_to_uint8(x) if dtype == torch.uint8 else x.to(dtype)


def _by_side(windows: Sequence[Box]) -> dict[int, list[int]]:
    """Indices grouped by window side, so same-size windows resize in one batched call."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, w in enumerate(windows):
        groups[w[2] - w[0]].append(i)
    return groups


def to_crops(
    images: torch.Tensor | Sequence[torch.Tensor],
    boxes: Sequence[Sequence[int]],
    crop_size: int = 32,
    crop_scale: float = 1.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source crops (B,3,R,R), box masks (B,1,R,R) and windows (B,4) for images (3,H,W) each.

    Images are float in [-1, 1] or uint8 (converted after cropping, which is much cheaper than
    converting whole images); crops are float32 in [-1, 1]. Images may differ in size (pass a
    list); a 4-D tensor is treated as a list of images.
    """
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
    checked = [
        check_box(b, img.shape[-1], img.shape[-2]) for img, b in zip(images, boxes, strict=True)
    ]
    windows = [
        crop_window(b, img.shape[-1], img.shape[-2], crop_scale)
        for img, b in zip(images, checked, strict=True)
    ]
    device = images[0].device
    src = torch.empty((len(images), 3, crop_size, crop_size), device=device)
    for idx in _by_side(windows).values():
        stack = torch.stack([_window(images[i], windows[i]) for i in idx])
        src[idx] = _resize(_as_model(stack), crop_size)
    masks = torch.stack(
        [box_mask_in_crop(b, w, crop_size) for b, w in zip(checked, windows, strict=True)]
    )
    return src, masks.to(device), torch.tensor(windows, dtype=torch.long)


def paste_back(
    images: torch.Tensor | Sequence[torch.Tensor],
    crops: torch.Tensor,
    windows: torch.Tensor | Sequence[Sequence[int]],
    boxes: Sequence[Sequence[int]],
) -> list[torch.Tensor] | torch.Tensor:
    """Copies of the images with each crop resized back and written INSIDE its box only.

    Every pixel outside the box is the input's own value, so an edit can never touch the objects
    a question is about when those lie outside the box. Images are float in [-1, 1] or uint8
    (the box is then rounded to uint8). Returns a tensor for a tensor input.
    """
    wins = [tuple(int(v) for v in w) for w in windows]
    out = [img.clone() for img in images]
    for side, idx in _by_side(wins).items():
        big = _resize(crops[idx].float(), side)
        for j, i in enumerate(idx):
            wx0, wy0 = wins[i][0], wins[i][1]
            x0, y0, x1, y1 = check_box(boxes[i], out[i].shape[-1], out[i].shape[-2])
            region = big[j, :, y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0].to(out[i].device)
            out[i][:, y0:y1, x0:x1] = _like(region, out[i].dtype)
    return torch.stack(out) if isinstance(images, torch.Tensor) else out


def pil_to_model(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float32 in [-1, 1]."""
    return uint8_to_model(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))


def uint8_to_model(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (exactly invertible by ``model_to_uint8``)."""
    return x.float() / 127.5 - 1.0


def model_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8, rounded and clamped."""
    return ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
