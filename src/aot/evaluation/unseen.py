"""Unseen manipulations: image changes never used in training, to test robustness.

Each manipulation is a pure function ``(image, record, rng) -> Manipulated`` (the new image and
the ``BoxMap`` taking boxes of the input to boxes of the output); it never mutates its input and
depends only on its arguments. ``record`` needs ``target_boxes`` (``[x0, y0, x1, y1]``, x1/y1
exclusive); ``apply_unseen`` passes, per image, the union of the boxes of every record about it.

**Guarantee.** The pixels inside every target box are unchanged (for the geometric ones:
carried along unchanged by ``crop``, resampled but fully kept by ``rescale_pad``), so the ground
truth stays valid. Consequently ``blur``, ``jpeg`` and ``colour_shift`` degrade the *context*
of the targets, not the targets themselves (target pixels are pasted back). The guarantee rests
on the schema's promise that ``target_boxes`` lists every object the question is about (true
for world records: counts and existence list all matching objects, and questions whose answer
is "none" have nothing to protect). Tables without ``target_boxes`` (POPE, HallusionBench,
HR-Bench) are refused by ``apply_unseen``: occluding or cropping them could remove the answer.

Manipulations (``UNSEEN_MANIPULATIONS``):

* ``occlude_grey`` / ``occlude_noise``: 2-4 flat neutral-grey / uniform-noise rectangles (10-20%
  of each side) placed outside the target boxes dilated by 3% of the short side (at least 2 px).
  Grey is not an object colour of the world, so a patch cannot create an answerable object.
  When no free spot is found (crowded image) a patch is skipped.
* ``colour_shift``: **decision** -- a hue rotation changes colour answers (world colours are
  only 20-30 degrees apart between red, orange and yellow) and also colour-based references
  ("the red circle"), counts by colour and existence questions about a colour. So when *any*
  record about the image depends on colour (``colour_dependent``) only a hue-preserving
  brightness and contrast change (factors 0.75-0.9 or 1.1-1.25) is applied; otherwise the hue
  is rotated by 10-25 degrees. Target pixels are restored either way.
* ``blur``: Gaussian blur of radius 0.6-1.2 px per 224 px of short side (at least that
  radius): mild enough to keep shapes.
* ``jpeg``: JPEG re-encoding at quality 8-24 (blocking and ringing artefacts).
* ``rescale_pad``: the image shrunk by 0.65-0.9 (bilinear) and pasted at a random offset on a
  grey canvas of the original size. Boxes map as ``floor(x0 * s) + dx - 1`` ..
  ``ceil(x1 * s) + dx + 1`` (clipped): the scaled box, grown by the 1 px reach of the
  resampling filter, so every pixel the object influences lies inside the mapped box.
* ``crop``: a window of 60-95% of each side containing every dilated target box; the image
  size changes and boxes shift exactly by the window's origin. An axis the boxes fill is not
  cropped.
"""

from __future__ import annotations

import io
import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance, ImageFilter

from aot.evaluation.protocols import load_picture

Box = tuple[int, int, int, int]

# Colour names that make a question colour-dependent: the world's palette and common names
# used by public benchmarks.
COLOUR_WORDS: frozenset[str] = frozenset(
    "red green blue yellow purple orange black white gray grey brown pink cyan magenta "
    "violet gold golden silver beige teal turquoise color colour colors colours colored "
    "coloured".split()
)
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class BoxMap:
    """Maps boxes of an input image onto its manipulated output (``width`` x ``height``).

    ``x -> x * scale_x + offset_x`` (same for y), rounded outward and grown by ``grow`` pixels,
    then clipped to the output image.
    """

    width: int
    height: int
    scale_x: float = 1.0
    scale_y: float = 1.0
    offset_x: int = 0
    offset_y: int = 0
    grow: int = 0

    @classmethod
    def identity(cls, width: int, height: int) -> BoxMap:
        """The map of a manipulation that moves nothing."""
        return cls(width, height)

    def map_box(self, box: Sequence[int]) -> list[int]:
        """The output box ``[x0, y0, x1, y1]`` covering the input ``box``."""
        x0, y0, x1, y1 = (int(v) for v in box)
        return [
            max(0, math.floor(x0 * self.scale_x) + self.offset_x - self.grow),
            max(0, math.floor(y0 * self.scale_y) + self.offset_y - self.grow),
            min(self.width, math.ceil(x1 * self.scale_x) + self.offset_x + self.grow),
            min(self.height, math.ceil(y1 * self.scale_y) + self.offset_y + self.grow),
        ]


class Manipulated(NamedTuple):
    """A manipulated image and the map of boxes onto it."""

    image: Image.Image
    boxes: BoxMap


Manipulation = Callable[[Image.Image, Mapping[str, Any], np.random.Generator], Manipulated]

# ------------------------------------------------------------------------------------ helpers


def record_boxes(record: Mapping[str, Any], size: tuple[int, int]) -> list[Box]:
    """The record's target boxes clipped to the image ``size``; empty boxes dropped."""
    width, height = size
    out: list[Box] = []
    for box in record.get("target_boxes", []) if record is not None else []:
        x0, y0, x1, y1 = (int(v) for v in box)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
        if x0 < x1 and y0 < y1:
            out.append((x0, y0, x1, y1))
    return out


def guard_margin(size: tuple[int, int]) -> int:
    """Pixels kept free around target boxes: 3% of the short side, at least 2."""
    return max(2, round(0.03 * min(size)))


def dilate(box: Box, margin: int, size: tuple[int, int]) -> Box:
    """``box`` grown by ``margin`` on every side, clipped to ``size``."""
    return (
        max(0, box[0] - margin),
        max(0, box[1] - margin),
        min(size[0], box[2] + margin),
        min(size[1], box[3] + margin),
    )


def overlaps(a: Box, b: Box) -> bool:
    """Whether two half-open boxes share a pixel."""
    return max(a[0], b[0]) < min(a[2], b[2]) and max(a[1], b[1]) < min(a[3], b[3])


def restore_boxes(original: Image.Image, changed: Image.Image, boxes: Sequence[Box]) -> Image.Image:
    """``changed`` with the pixels inside ``boxes`` copied back from ``original``."""
    out = changed.copy()
    for box in boxes:
        out.paste(original.crop(box), box[:2])
    return out


def colour_dependent(record: Mapping[str, Any]) -> bool:
    """Whether the record's answer or its references depend on colour.

    An explicit boolean ``colour_dependent`` entry wins; otherwise: the attribute family, a
    spec mentioning ``color``, or a colour word in the question, options or answer text.
    """
    explicit = record.get("colour_dependent")
    if isinstance(explicit, bool | np.bool_):
        return bool(explicit)
    if record.get("family") == "attribute":
        return True
    spec = record.get("spec")
    if isinstance(spec, str) and '"color"' in spec:
        return True
    options = record.get("options")
    extra = [] if options is None else list(options)
    texts = [record.get("question"), record.get("answer_text"), *extra]
    words = {w for t in texts if isinstance(t, str) for w in _WORD.findall(t.lower())}
    return bool(words & COLOUR_WORDS)


def signed_factor(rng: np.random.Generator, low: float, high: float) -> float:
    """``1 +/- u`` with ``u`` uniform in [low, high) and a random sign."""
    return 1.0 + float(rng.choice([-1.0, 1.0])) * float(rng.uniform(low, high))


# ----------------------------------------------------------------------------- manipulations


def free_spot(
    rng: np.random.Generator, size: tuple[int, int], patch: tuple[int, int], guard: list[Box]
) -> tuple[int, int] | None:
    """A random top-left corner where a ``patch`` fits without touching ``guard`` boxes."""
    width, height = size
    if patch[0] > width or patch[1] > height:
        return None
    for _ in range(50):
        x = int(rng.integers(0, width - patch[0] + 1))
        y = int(rng.integers(0, height - patch[1] + 1))
        if not any(overlaps((x, y, x + patch[0], y + patch[1]), g) for g in guard):
            return x, y
    return None


def patch_pixels(rng: np.random.Generator, region: np.ndarray, fill: str) -> np.ndarray:
    """Uniform noise, or a neutral grey at least 25 levels away from the region's mean."""
    if fill == "noise":
        return rng.integers(0, 256, size=region.shape, dtype=np.uint8)
    level = int(rng.integers(60, 200))
    mean = float(region.mean())
    if abs(level - mean) < 25:
        level = 40 if mean > 128 else 215
    return np.full(region.shape, level, dtype=np.uint8)


def occlude(
    image: Image.Image, record: Mapping[str, Any], rng: np.random.Generator, fill: str
) -> Manipulated:
    """2-4 ``fill`` patches ("grey" or "noise") outside the dilated target boxes."""
    arr = np.array(image.convert("RGB"))
    size = (arr.shape[1], arr.shape[0])
    guard = [dilate(b, guard_margin(size), size) for b in record_boxes(record, size)]
    for _ in range(int(rng.integers(2, 5))):
        patch = (
            max(2, round(rng.uniform(0.1, 0.2) * size[0])),
            max(2, round(rng.uniform(0.1, 0.2) * size[1])),
        )
        spot = free_spot(rng, size, patch, guard)
        if spot is None:
            continue
        window = (slice(spot[1], spot[1] + patch[1]), slice(spot[0], spot[0] + patch[0]))
        arr[window] = patch_pixels(rng, arr[window], fill)
    return Manipulated(Image.fromarray(arr, "RGB"), BoxMap.identity(*size))


def occlude_grey(
    image: Image.Image, record: Mapping[str, Any], rng: np.random.Generator
) -> Manipulated:
    """Neutral grey rectangles outside the dilated target boxes."""
    return occlude(image, record, rng, "grey")


def occlude_noise(
    image: Image.Image, record: Mapping[str, Any], rng: np.random.Generator
) -> Manipulated:
    """Uniform-noise rectangles outside the dilated target boxes."""
    return occlude(image, record, rng, "noise")


def rotate_hue(image: Image.Image, degrees: float) -> Image.Image:
    """``image`` with its HSV hue rotated by ``degrees`` (PIL's 0-255 hue scale)."""
    h, s, v = image.convert("HSV").split()
    shift = round(degrees / 360.0 * 256)
    hue = Image.fromarray(((np.asarray(h, dtype=np.int32) + shift) % 256).astype(np.uint8), "L")
    return Image.merge("HSV", (hue, s, v)).convert("RGB")


def brightness_contrast(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Hue-preserving (up to clipping) brightness then contrast change, each by 10-25%."""
    brighter = ImageEnhance.Brightness(image).enhance(signed_factor(rng, 0.1, 0.25))
    return ImageEnhance.Contrast(brighter).enhance(signed_factor(rng, 0.1, 0.25))


def colour_shift(
    image: Image.Image, record: Mapping[str, Any], rng: np.random.Generator
) -> Manipulated:
    """Hue rotation (10-25 degrees), or brightness/contrast when colour matters; boxes kept."""
    rgb = image.convert("RGB")
    if colour_dependent(record):
        changed = brightness_contrast(rgb, rng)
    else:
        changed = rotate_hue(rgb, float(rng.choice([-1.0, 1.0]) * rng.uniform(10.0, 25.0)))
    kept = restore_boxes(rgb, changed, record_boxes(record, rgb.size))
    return Manipulated(kept, BoxMap.identity(*rgb.size))


def blur(image: Image.Image, record: Mapping[str, Any], rng: np.random.Generator) -> Manipulated:
    """Mild Gaussian blur outside the target boxes."""
    rgb = image.convert("RGB")
    radius = float(rng.uniform(0.6, 1.2)) * max(1.0, min(rgb.size) / 224.0)
    changed = rgb.filter(ImageFilter.GaussianBlur(radius))
    kept = restore_boxes(rgb, changed, record_boxes(record, rgb.size))
    return Manipulated(kept, BoxMap.identity(*rgb.size))


def jpeg(image: Image.Image, record: Mapping[str, Any], rng: np.random.Generator) -> Manipulated:
    """JPEG artefacts (quality 8-24) outside the target boxes."""
    rgb = image.convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=int(rng.integers(8, 25)))
    buffer.seek(0)
    changed = Image.open(buffer).convert("RGB")
    kept = restore_boxes(rgb, changed, record_boxes(record, rgb.size))
    return Manipulated(kept, BoxMap.identity(*rgb.size))


def rescale_pad(
    image: Image.Image, record: Mapping[str, Any], rng: np.random.Generator
) -> Manipulated:
    """The image shrunk by 0.65-0.9 and pasted at a random offset on a grey canvas."""
    rgb = image.convert("RGB")
    width, height = rgb.size
    scale = float(rng.uniform(0.65, 0.9))
    small_w, small_h = max(1, round(width * scale)), max(1, round(height * scale))
    small = rgb.resize((small_w, small_h), Image.Resampling.BILINEAR)
    dx = int(rng.integers(0, width - small_w + 1))
    dy = int(rng.integers(0, height - small_h + 1))
    grey = int(round(float(np.asarray(rgb.convert("L")).mean())))
    canvas = Image.new("RGB", (width, height), (grey, grey, grey))
    canvas.paste(small, (dx, dy))
    mapping = BoxMap(width, height, small_w / width, small_h / height, dx, dy, grow=1)
    return Manipulated(canvas, mapping)


def crop_extent(rng: np.random.Generator, full: int, need: int) -> int:
    """A window length in [max(need, 60%), 95%] of ``full``; ``full`` when that is empty."""
    low = max(need, math.ceil(0.6 * full))
    high = full - max(1, round(0.05 * full))
    return full if low > high else int(rng.integers(low, high + 1))


def crop(image: Image.Image, record: Mapping[str, Any], rng: np.random.Generator) -> Manipulated:
    """A window (60-95% of each side) containing every dilated target box."""
    rgb = image.convert("RGB")
    size = rgb.size
    guard = [dilate(b, guard_margin(size), size) for b in record_boxes(record, size)]
    if guard:
        union = (
            min(g[0] for g in guard),
            min(g[1] for g in guard),
            max(g[2] for g in guard),
            max(g[3] for g in guard),
        )
    else:
        union = (size[0], size[1], 0, 0)  # nothing to keep: any window will do
    width = crop_extent(rng, size[0], max(0, union[2] - union[0]))
    height = crop_extent(rng, size[1], max(0, union[3] - union[1]))
    x0 = int(rng.integers(max(0, union[2] - width), min(union[0], size[0] - width) + 1))
    y0 = int(rng.integers(max(0, union[3] - height), min(union[1], size[1] - height) + 1))
    window = rgb.crop((x0, y0, x0 + width, y0 + height))
    return Manipulated(window, BoxMap(width, height, offset_x=-x0, offset_y=-y0))


UNSEEN_MANIPULATIONS: dict[str, Manipulation] = {
    "occlude_grey": occlude_grey,
    "occlude_noise": occlude_noise,
    "colour_shift": colour_shift,
    "blur": blur,
    "jpeg": jpeg,
    "rescale_pad": rescale_pad,
    "crop": crop,
}

# ----------------------------------------------------------------------------------- tables


def manipulation_rng(seed: int, key: str, name: str) -> np.random.Generator:
    """The generator of one (image, manipulation): independent of the order of names/images."""
    entropy = [int(seed), zlib.crc32(key.encode()), zlib.crc32(name.encode())]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def image_record(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One record for an image: all target boxes of its rows, colour-dependent if any is."""
    return {
        "target_boxes": [list(b) for r in rows for b in r["target_boxes"]],
        "colour_dependent": any(colour_dependent(r) for r in rows),
    }


def check_unseen(table: pd.DataFrame, names: Sequence[str], image_column: str) -> None:
    """Reject unknown manipulation names and tables lacking the needed columns."""
    unknown = [n for n in names if n not in UNSEEN_MANIPULATIONS]
    if unknown:
        raise ValueError(f"unknown manipulation(s) {unknown}; known: {list(UNSEEN_MANIPULATIONS)}")
    missing = [c for c in (image_column, "record_id", "target_boxes") if c not in table.columns]
    if missing:
        raise ValueError(
            f"apply_unseen: the table lacks column(s) {missing}; target_boxes is required "
            "because the manipulations must know which pixels carry the answer"
        )


def apply_unseen(
    table: pd.DataFrame,
    images: Mapping[str, Any],
    names: Sequence[str],
    seed: int = 0,
    *,
    image_column: str = "image",
) -> tuple[pd.DataFrame, dict[str, Image.Image]]:
    """Every manipulation in ``names`` applied to every image of ``table``.

    Returns only the new rows and images: per (row, name) a copy of the row with
    ``image = "{key}-{name}"``, ``record_id = "{record_id}-{name}"``, remapped
    ``target_boxes``, ``manipulation = name`` and ``source_image = key``; rows are ordered by
    name, then as in ``table``. Images are computed eagerly. Deterministic for ``seed``.
    """
    check_unseen(table, names, image_column)
    rows = table.reset_index(drop=True).to_dict("records")
    by_image: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_image.setdefault(str(row[image_column]), []).append(row)
    out_images: dict[str, Image.Image] = {}
    maps: dict[tuple[str, str], BoxMap] = {}
    for key, group in by_image.items():
        picture = load_picture(images, key)
        merged = image_record(group)
        for name in names:
            result = UNSEEN_MANIPULATIONS[name](picture, merged, manipulation_rng(seed, key, name))
            out_images[f"{key}-{name}"] = result.image
            maps[(key, name)] = result.boxes
    new_rows = [
        manipulated_row(row, name, maps[(str(row[image_column]), name)], image_column)
        for name in names
        for row in rows
    ]
    columns = list(dict.fromkeys([*table.columns, "manipulation", "source_image"]))
    return pd.DataFrame(new_rows, columns=columns), out_images


def manipulated_row(
    row: Mapping[str, Any], name: str, mapping: BoxMap, image_column: str
) -> dict[str, Any]:
    """A copy of ``row`` pointing at its manipulated image, with remapped target boxes."""
    key = str(row[image_column])
    return {
        **row,
        image_column: f"{key}-{name}",
        "record_id": f"{row['record_id']}-{name}",
        "target_boxes": [mapping.map_box(b) for b in row["target_boxes"]],
        "manipulation": name,
        "source_image": key,
    }
