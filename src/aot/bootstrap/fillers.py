"""Image fillers: what paints the new margins (stage 1) and the distractor boxes (stage 2).

``ProceduralFiller`` is exact: it paints exactly the object a prompt names, so the scene graph can
record what was drawn and every ground truth stays exactly derivable. ``DiffusersFiller`` (in
``aot.bootstrap.diffusion``, re-exported here) uses an inpainting diffusion model, as the paper's
"Image Extender" / "Image Filler" do; it cannot report what it drew, so its output must pass the
detector-based duplication check instead.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image
from scipy import ndimage

from aot.bootstrap.categories import parse_prompt
from aot.bootstrap.diffusion import DiffusersFiller, build_tiny_inpaint_pipeline
from aot.world import COLORS, Box, WorldConfig, paint_object, render_background
from aot.world.scene import sample_background

logger = logging.getLogger(__name__)

MARGIN_MODES: tuple[str, ...] = ("mirror", "world")
FILLER_KINDS: tuple[str, ...] = ("procedural", "diffusers")


@runtime_checkable
class Filler(Protocol):
    """Paints unknown image regions. ``exact`` says whether ``fill_box`` draws exactly the
    object its prompt names (and nothing else), which lets the scene graph record it."""

    exact: bool

    def fill_margins(
        self, canvas: Image.Image, known_mask: np.ndarray, rng: np.random.Generator
    ) -> Image.Image:
        """Fill every pixel where ``known_mask`` is False; known pixels should stay as they are."""
        ...

    def fill_box(
        self, image: Image.Image, box: Box, prompt: str, rng: np.random.Generator
    ) -> Image.Image:
        """Paint what ``prompt`` describes into ``box``; pixels outside the box stay as they are."""
        ...


def known_box(known_mask: np.ndarray) -> Box:
    """Bounding box of the known region (the pasted source is a rectangle)."""
    ys, xs = np.nonzero(known_mask)
    if len(xs) == 0:
        raise ValueError("known_mask is empty: there is no source region to extend")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _rgb_keys(arr: np.ndarray) -> np.ndarray:
    """One integer per RGB pixel (0xRRGGBB), so a colour compares as one number, not three."""
    a = np.asarray(arr, dtype=np.uint32)
    return (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]


_PALETTE_KEYS = _rgb_keys(np.array(list(COLORS.values())))


def remove_palette_pixels(arr: np.ndarray) -> np.ndarray:
    """Replace every pixel of an exact object colour by its nearest non-object pixel.

    World objects are painted flat in palette colours without anti-aliasing, and toned
    backgrounds never hold a palette colour, so this erases the objects and keeps the background:
    mirror padding must not mirror objects into the margins (that would duplicate targets).
    """
    is_object = np.isin(_rgb_keys(arr), _PALETTE_KEYS)
    if not is_object.any():
        return arr.copy()
    if is_object.all():
        return np.broadcast_to(arr.reshape(-1, 3).mean(0).astype(np.uint8), arr.shape).copy()
    rows, cols = ndimage.distance_transform_edt(
        is_object, return_distances=False, return_indices=True
    )
    return arr[rows, cols]


def _tone_ramp(
    shape: tuple[int, int], box: Box, strength: float, rng: np.random.Generator
) -> np.ndarray:
    """Per-pixel RGB gain: 1 on the known box, drifting to a random tint far from it.

    The gain is continuous at the paste border (no seam) yet makes the margins no exact mirror.
    """
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w]
    dx = np.maximum(np.maximum(box[0] - xs, xs - (box[2] - 1)), 0)
    dy = np.maximum(np.maximum(box[1] - ys, ys - (box[3] - 1)), 0)
    dist = np.maximum(dx, dy).astype(float)
    dist /= max(1.0, float(dist.max()))
    tint = strength * rng.uniform(-1.0, 1.0, size=3)
    return 1.0 + dist[..., None] * tint[None, None]


class ProceduralFiller:
    """Exact filler for the procedural world.

    Margins: ``"mirror"`` (default) extends the source's own background by symmetric padding
    after erasing its objects, with a gentle tone drift: seam-free by construction and with the
    source's statistics, so the realism check measures the filler, not a texture mismatch.
    ``"world"`` renders a fresh world background (a new texture; seams are expected).
    Boxes: the prompt's object painted with the world's painter.
    """

    exact = True

    def __init__(
        self, world_cfg: WorldConfig | None = None, margins: str = "mirror", tone: float = 0.08
    ) -> None:
        if margins not in MARGIN_MODES:
            raise ValueError(f"ProceduralFiller: margins {margins!r} unknown; use {MARGIN_MODES}")
        if not 0.0 <= tone <= 0.5:
            raise ValueError(f"ProceduralFiller: tone must be in [0, 0.5], got {tone}")
        self.world_cfg = world_cfg or WorldConfig()
        self.margins = margins
        self.tone = float(tone)

    def fill_margins(
        self, canvas: Image.Image, known_mask: np.ndarray, rng: np.random.Generator
    ) -> Image.Image:
        arr = np.asarray(canvas.convert("RGB"))
        h, w = arr.shape[:2]
        x0, y0, x1, y1 = known_box(known_mask)
        if self.margins == "world":
            background = render_background(sample_background(rng, self.world_cfg), w, h)
            filled = np.asarray(background, dtype=float)
        else:
            clean = remove_palette_pixels(arr[y0:y1, x0:x1])
            pad = ((y0, h - y1), (x0, w - x1), (0, 0))
            filled = np.pad(clean, pad, mode="symmetric").astype(float)
        if self.tone > 0:
            filled = filled * _tone_ramp((h, w), (x0, y0, x1, y1), self.tone, rng)
        out = np.clip(np.rint(filled), 0, 255).astype(np.uint8)
        out[known_mask] = arr[known_mask]
        return Image.fromarray(out, "RGB")

    def fill_box(
        self, image: Image.Image, box: Box, prompt: str, rng: np.random.Generator
    ) -> Image.Image:
        _, color, shape = parse_prompt(prompt)
        return paint_object(image, box, shape, color)


def make_filler(params: dict[str, Any]) -> Filler:
    """Build a filler from Kedro params: ``{"kind": "procedural" | "diffusers", ...}``.

    The remaining keys go to the filler's constructor; for ``procedural`` a ``world`` dict is
    turned into a ``WorldConfig``. Unknown kinds or keys fail with a ValueError naming them.
    """
    params = dict(params or {})
    kind = params.pop("kind", "procedural")
    if kind not in FILLER_KINDS:
        raise ValueError(f"filler kind {kind!r} unknown; known kinds: {list(FILLER_KINDS)}")
    if kind == "procedural":
        if "world" in params:
            params["world_cfg"] = WorldConfig.from_dict(params.pop("world") or {})
        factory: Any = ProceduralFiller
    else:
        factory = DiffusersFiller
    try:
        return factory(**params)
    except TypeError as err:
        raise ValueError(f"filler {kind!r}: bad parameters {sorted(params)} ({err})") from err


__all__ = [
    "FILLER_KINDS",
    "DiffusersFiller",
    "Filler",
    "ProceduralFiller",
    "build_tiny_inpaint_pipeline",
    "known_box",
    "make_filler",
    "remove_palette_pixels",
]
