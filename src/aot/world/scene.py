"""Procedural scenes: vocabulary, scene graph, sampling, backgrounds and rendering.

A scene is a small scene graph (background + non-overlapping flat-coloured shapes). Rendering is a
pure function of the graph, so any question about the scene has an exactly known answer and any
edit of the graph re-renders with pixels changed only where the graph changed.

Objects are painted without anti-aliasing from a boolean mask whose bounding box is exactly the
object box, so every mask pixel carries exactly the object's RGB colour.

Background images come from scikit-image's bundled data. Verified offline (scikit-image 0.26.0,
no ``pooch`` installed, so nothing can be downloaded): each loader in ``_SKIMAGE_LOADERS`` was
called and returned an array; the files live in ``skimage/data/`` inside the wheel. Datasets that
need ``pooch`` (kidney, lily, skin, eagle, ...) fail without network and are not used.
``tests/world/test_scene.py`` re-checks that every listed image loads and renders.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels; x1 and y1 exclusive
RGB = tuple[int, int, int]

# Flat object colours, far apart in RGB so that no two are confusable even on busy backgrounds.
COLORS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (250, 220, 20),
    "purple": (150, 40, 190),
    "orange": (250, 130, 0),
}

# Side of an object's (square) box as a fraction of the image's short side: at 112 px a small
# object is 16 px, still recognisable.
SIZES: dict[str, float] = {"small": 0.14, "medium": 0.20, "large": 0.27}

# Muted plain backgrounds, distinct from every object colour.
PLAIN_COLORS: dict[str, RGB] = {
    "light_grey": (205, 205, 205),
    "grey": (150, 150, 150),
    "dark_grey": (80, 80, 80),
    "beige": (225, 212, 185),
    "slate": (112, 128, 144),
    "sand": (190, 176, 150),
}

_SKIMAGE_TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel")
_PROCEDURAL_TEXTURES: tuple[str, ...] = ("stripes", "noise")
TEXTURES: tuple[str, ...] = _SKIMAGE_TEXTURES + _PROCEDURAL_TEXTURES
PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "hubble_deep_field",
    "immunohistochemistry",
    "coins",
)
BACKGROUND_NAMES: dict[str, tuple[str, ...]] = {
    "plain": tuple(PLAIN_COLORS),
    "textured": TEXTURES,
    "photo": PHOTOS,
}

# Shapes as unions of convex polygons in the unit square (x right, y down). Every shape reaches
# 0 and 1 on both axes, which makes the painted mask's bounding box equal the object box.
_UNIT_POLYGONS: dict[str, tuple[tuple[tuple[float, float], ...], ...]] = {
    "square": (((0, 0), (1, 0), (1, 1), (0, 1)),),
    "triangle": (((0.5, 0), (1, 1), (0, 1)),),
    "diamond": (((0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)),),
    "hexagon": (((0.25, 0), (0.75, 0), (1, 0.5), (0.75, 1), (0.25, 1), (0, 0.5)),),
    "cross": (
        ((0.32, 0), (0.68, 0), (0.68, 1), (0.32, 1)),
        ((0, 0.32), (1, 0.32), (1, 0.68), (0, 0.68)),
    ),
}


def _star_kites() -> tuple[tuple[tuple[float, float], ...], ...]:
    """A five-pointed star as five convex kites (centre, inner, tip, inner) in the unit square."""
    inner_r = 0.5  # fatter than a regular pentagram (0.38) so tips survive at 16 px
    tips = [(-90 + 72 * k) for k in range(5)]
    raw_tips = [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in tips]
    raw_inner = [
        (inner_r * math.cos(math.radians(a + 36)), inner_r * math.sin(math.radians(a + 36)))
        for a in tips
    ]
    xs, ys = [p[0] for p in raw_tips], [p[1] for p in raw_tips]

    def norm(p: tuple[float, float]) -> tuple[float, float]:
        return ((p[0] - min(xs)) / (max(xs) - min(xs)), (p[1] - min(ys)) / (max(ys) - min(ys)))

    centre = norm((0.0, 0.0))
    return tuple(
        (centre, norm(raw_inner[k - 1]), norm(raw_tips[k]), norm(raw_inner[k])) for k in range(5)
    )


_UNIT_POLYGONS["star"] = _star_kites()
# The circle is a 48-gon (a multiple of 4, so it has vertices on all four box sides).
_UNIT_POLYGONS["circle"] = (
    tuple(
        (0.5 + 0.5 * math.cos(2 * math.pi * k / 48), 0.5 + 0.5 * math.sin(2 * math.pi * k / 48))
        for k in range(48)
    ),
)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross")


@dataclass(frozen=True)
class SceneObject:
    """One flat-coloured shape; ``box`` is the tight bounding box of its painted pixels."""

    object_id: int
    shape: str
    color: str
    size: str
    box: Box


@dataclass(frozen=True)
class Background:
    """Background recipe; ``strength`` is stored so rendering depends on the graph alone."""

    kind: str
    name: str
    seed: int
    strength: float = 0.5


@dataclass(frozen=True)
class Scene:
    """A scene graph; ``render`` is deterministic so the graph is the single source of truth."""

    scene_id: str
    width: int
    height: int
    background: Background
    objects: tuple[SceneObject, ...]

    def render(self) -> Image.Image:
        """Background first, then every object painted flat with its exact colour."""
        arr = render_background(self.background, self.width, self.height).copy()
        for obj in self.objects:
            _paint_object(arr, obj.shape, COLORS[obj.color], obj.box)
        return Image.fromarray(arr, "RGB")

    def object_mask(self, object_id: int) -> np.ndarray:
        """Boolean HxW mask of exactly the pixels painted for ``object_id``."""
        obj = self.get_object(object_id)
        mask = np.zeros((self.height, self.width), dtype=bool)
        x0, y0, x1, y1 = obj.box
        mask[y0:y1, x0:x1] = shape_mask(obj.shape, x1 - x0, y1 - y0)
        return mask

    def get_object(self, object_id: int) -> SceneObject:
        """Look up an object by id; KeyError names the id when it is absent."""
        for obj in self.objects:
            if obj.object_id == object_id:
                return obj
        raise KeyError(f"scene {self.scene_id!r} has no object {object_id}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (lists, ints, strs) that ``from_dict`` turns back into an equal scene."""
        return {
            "scene_id": self.scene_id,
            "width": self.width,
            "height": self.height,
            "background": {
                "kind": self.background.kind,
                "name": self.background.name,
                "seed": self.background.seed,
                "strength": self.background.strength,
            },
            "objects": [
                {
                    "object_id": o.object_id,
                    "shape": o.shape,
                    "color": o.color,
                    "size": o.size,
                    "box": list(o.box),
                }
                for o in self.objects
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        """Inverse of ``to_dict`` (lists become tuples so the result compares equal)."""
        bg = d["background"]
        return cls(
            scene_id=str(d["scene_id"]),
            width=int(d["width"]),
            height=int(d["height"]),
            background=Background(
                str(bg["kind"]), str(bg["name"]), int(bg["seed"]), float(bg.get("strength", 0.5))
            ),
            objects=tuple(
                SceneObject(
                    int(o["object_id"]),
                    str(o["shape"]),
                    str(o["color"]),
                    str(o["size"]),
                    _as_box(o["box"]),
                )
                for o in d["objects"]
            ),
        )


def _as_box(values: Any) -> Box:
    """Four ints as a Box tuple; ValueError otherwise."""
    box = tuple(int(v) for v in values)
    if len(box) != 4:
        raise ValueError(f"a box needs 4 ints, got {values!r}")
    return box  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def _default_backgrounds() -> dict[str, float]:
    """A fresh dict per config (a dataclass default must not be a shared mutable)."""
    return {"plain": 0.5, "textured": 0.3, "photo": 0.2}


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of scene sampling; validated on construction so bad params fail early."""

    image_size: int = 112
    min_objects: int = 2
    max_objects: int = 5
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    sizes: tuple[str, ...] = tuple(SIZES)
    backgrounds: dict[str, float] = field(default_factory=_default_backgrounds)
    background_strength: float = 0.5
    min_gap: int = 2
    # 0: objects anywhere. N > 0: each object sits inside one N x N cell of a grid (28 = one
    # Qwen2.5-VL image token), so every token sees whole objects (see `place_box`).
    grid: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; the ValueError names the offending field or vocabulary item."""
        _check_int("image_size", self.image_size, 28)
        if self.image_size % 28:
            raise ValueError(
                f"WorldConfig.image_size must be a multiple of 28 (Qwen2.5-VL patch grid), "
                f"got {self.image_size}"
            )
        _check_int("min_objects", self.min_objects, 1)
        _check_int("max_objects", self.max_objects, self.min_objects)
        _check_int("min_gap", self.min_gap, 0)
        _check_int("grid", self.grid, 0)
        if self.grid and (self.image_size % self.grid or self.grid < 8):
            raise ValueError(
                f"WorldConfig.grid must be 0 or a divisor of image_size ({self.image_size}) "
                f"of at least 8, got {self.grid}"
            )
        _check_vocab("shapes", self.shapes, SHAPES)
        _check_vocab("colors", self.colors, tuple(COLORS))
        _check_vocab("sizes", self.sizes, tuple(SIZES))
        _check_backgrounds(self.backgrounds)
        s = self.background_strength
        if isinstance(s, bool) or not isinstance(s, int | float) or not 0.0 <= s <= 1.0:
            raise ValueError(f"WorldConfig.background_strength must be in [0, 1], got {s!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        """Build from Kedro params (lists become tuples); unknown keys are rejected by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"WorldConfig: unknown key(s) {unknown}; known keys: {sorted(known)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if "backgrounds" in kwargs:
            kwargs["backgrounds"] = dict(kwargs["backgrounds"])
        return cls(**kwargs)


def _check_int(name: str, value: Any, minimum: int) -> None:
    """Reject bools too: YAML ``true`` must not silently become 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"WorldConfig.{name} must be an int >= {minimum}, got {value!r}")


def _check_vocab(name: str, values: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(values, tuple) or not values:
        raise ValueError(f"WorldConfig.{name} must be a non-empty tuple, got {values!r}")
    for v in values:
        if v not in allowed:
            raise ValueError(f"WorldConfig.{name}: unknown value {v!r}; allowed: {list(allowed)}")
    if len(set(values)) != len(values):
        raise ValueError(f"WorldConfig.{name} has duplicates: {list(values)}")


def _check_backgrounds(weights: Any) -> None:
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"WorldConfig.backgrounds must be a non-empty dict, got {weights!r}")
    for kind, w in weights.items():
        if kind not in BACKGROUND_NAMES:
            raise ValueError(
                f"WorldConfig.backgrounds: unknown background kind {kind!r}; "
                f"allowed: {list(BACKGROUND_NAMES)}"
            )
        if isinstance(w, bool) or not isinstance(w, int | float) or not w >= 0 or math.isinf(w):
            raise ValueError(f"WorldConfig.backgrounds[{kind!r}] must be >= 0, got {w!r}")
    if sum(weights.values()) <= 0:
        raise ValueError("WorldConfig.backgrounds: weights must not all be zero")


def size_pixels(size: str, image_side: int) -> int:
    """Box side in pixels for a size label, relative to the image's short side."""
    return max(4, round(SIZES[size] * image_side))


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------

_PLACEMENT_TRIES = 60


def boxes_separated(a: Box, b: Box, gap: int) -> bool:
    """True when at least ``gap`` empty pixels separate the boxes on some axis."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def box_inside(box: Box, width: int, height: int) -> bool:
    """True when the (exclusive-end) box is non-empty and lies fully inside the image."""
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


def grid_side(side: int, grid: int) -> int:
    """Object side under a grid layout: at most the cell less a 1-px border on each side."""
    return min(side, grid - 2) if grid else side


def place_box(
    rng: np.random.Generator,
    side: int,
    width: int,
    height: int,
    grid: int = 0,
    near: tuple[float, float] | None = None,
) -> Box:
    """One random square box inside the image (not checked against other boxes).

    With ``grid`` the box lies inside one cell: a tiny Qwen2.5-VL learns a shape in a few hundred
    steps when the object sits inside one 28-px token, and barely at all when objects straddle
    tokens (exp-defender.md). ``near`` centres the box, or its cell, on a point (jittered)."""
    if not grid:
        if near is None:
            x0 = int(rng.integers(0, max(1, width - side + 1)))
            y0 = int(rng.integers(0, max(1, height - side + 1)))
        else:
            jitter = rng.uniform(-side, side, size=2)
            x0 = min(max(int(round(near[0] + jitter[0] - side / 2)), 0), width - side)
            y0 = min(max(int(round(near[1] + jitter[1] - side / 2)), 0), height - side)
        return x0, y0, x0 + side, y0 + side
    side = grid_side(side, grid)
    cols, rows = width // grid, height // grid
    if near is None:
        col, row = int(rng.integers(cols)), int(rng.integers(rows))
    else:
        jitter = rng.uniform(-grid, grid, size=2)
        col = min(max(int((near[0] + jitter[0]) // grid), 0), cols - 1)
        row = min(max(int((near[1] + jitter[1]) // grid), 0), rows - 1)
    x0 = col * grid + int(rng.integers(1, grid - side))
    y0 = row * grid + int(rng.integers(1, grid - side))
    return x0, y0, x0 + side, y0 + side


def _place(rng: np.random.Generator, side: int, cfg: WorldConfig, taken: list[Box]) -> Box | None:
    """Rejection-sample a free box; bounded tries so a crowded scene just gets fewer objects."""
    n = cfg.image_size
    for _ in range(_PLACEMENT_TRIES):
        box = place_box(rng, side, n, n, cfg.grid)
        if all(boxes_separated(box, t, cfg.min_gap) for t in taken):
            return box
    return None


def sample_background(rng: np.random.Generator, cfg: WorldConfig) -> Background:
    """Pick a background kind by weight, then a name uniformly and a seed for crop/noise."""
    kinds = [k for k, w in cfg.backgrounds.items() if w > 0]
    weights = np.array([cfg.backgrounds[k] for k in kinds], dtype=float)
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    names = BACKGROUND_NAMES[kind]
    name = names[int(rng.integers(len(names)))]
    return Background(kind, name, int(rng.integers(0, 2**31 - 1)), cfg.background_strength)


def sample_scene(rng: np.random.Generator, cfg: WorldConfig, scene_id: str) -> Scene:
    """Sample a scene: background, then objects placed without overlap (bounded retries)."""
    background = sample_background(rng, cfg)
    n_wanted = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    objects: list[SceneObject] = []
    for _ in range(n_wanted):
        shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
        color = cfg.colors[int(rng.integers(len(cfg.colors)))]
        size = cfg.sizes[int(rng.integers(len(cfg.sizes)))]
        box = _place(rng, size_pixels(size, cfg.image_size), cfg, [o.box for o in objects])
        if box is not None:
            objects.append(SceneObject(len(objects), shape, color, size, box))
    if len(objects) < n_wanted:
        logger.debug("scene %s: placed %d of %d objects", scene_id, len(objects), n_wanted)
    return Scene(scene_id, cfg.image_size, cfg.image_size, background, tuple(objects))


# ---------------------------------------------------------------------------------------------
# Painting
# ---------------------------------------------------------------------------------------------


# Half a pixel (plus float slack) of tolerance: a vertex on the box edge is then within reach of
# the nearest pixel centre, so each shape paints the first and last row and column of its box.
_EDGE_TOLERANCE = 0.5 + 1e-6


def _convex_mask(
    poly: tuple[tuple[float, float], ...], w: int, h: int, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """Pixel centres within half a pixel of a convex polygon spanning the box's pixel centres.

    Unit coordinates map to the centres of the first/last pixel (no rounding), which keeps the
    shapes mirror-symmetric; the tolerance guarantees the mask's bounding box is the whole box.
    """
    pts = [(u * (w - 1) + 0.5, v * (h - 1) + 0.5) for u, v in poly]
    area2 = sum(pts[i][0] * pts[i - 1][1] - pts[i - 1][0] * pts[i][1] for i in range(len(pts)))
    sign = 1.0 if area2 <= 0 else -1.0
    inside = np.ones((h, w), dtype=bool)
    for (px, py), (qx, qy) in zip(pts, pts[1:] + pts[:1], strict=True):
        ex, ey = qx - px, qy - py
        length = math.hypot(ex, ey)
        if length == 0:
            continue
        inside &= sign * (ex * (ys - py) - ey * (xs - px)) / length >= -_EDGE_TOLERANCE
    return inside


@lru_cache(maxsize=512)
def shape_mask(shape: str, w: int, h: int) -> np.ndarray:
    """Read-only boolean (h, w) mask of a shape filling a w x h box, touching all four sides."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPES)}")
    if w < 1 or h < 1:
        raise ValueError(f"box must be at least 1x1, got {w}x{h}")
    ys, xs = np.mgrid[0:h, 0:w].astype(float) + 0.5
    mask = np.zeros((h, w), dtype=bool)
    for poly in _UNIT_POLYGONS[shape]:
        mask |= _convex_mask(poly, w, h, xs, ys)
    mask.flags.writeable = False
    return mask


def _paint_object(arr: np.ndarray, shape: str, color_rgb: RGB, box: Box) -> None:
    """Paint one flat shape into an HxWx3 uint8 array in place: the single filler used everywhere
    (scene rendering, scene edits and image-level painting), so painted pixels always agree."""
    x0, y0, x1, y1 = box
    if not box_inside(box, arr.shape[1], arr.shape[0]):
        raise ValueError(f"box {box} is not inside the {arr.shape[1]}x{arr.shape[0]} image")
    region = arr[y0:y1, x0:x1]
    region[shape_mask(shape, x1 - x0, y1 - y0)] = np.asarray(color_rgb, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Backgrounds
# ---------------------------------------------------------------------------------------------


def _skimage_loader(name: str) -> Callable[[], np.ndarray]:
    """Imported lazily: scikit-image is only needed once a textured/photo background renders."""
    import skimage.data

    return getattr(skimage.data, name)


@lru_cache(maxsize=16)
def load_skimage_rgb(name: str) -> np.ndarray:
    """Load a bundled scikit-image picture as read-only RGB uint8 (cached: decoding is slow)."""
    img = np.asarray(_skimage_loader(name)())
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    img.flags.writeable = False
    return img


def _crop_resize(img: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded random crop with the target aspect ratio, resized bilinearly to width x height."""
    src_h, src_w = img.shape[:2]
    scale = rng.uniform(0.5, 1.0) * min(src_w / width, src_h / height)
    cw, ch = max(1, int(width * scale)), max(1, int(height * scale))
    x0 = int(rng.integers(0, src_w - cw + 1))
    y0 = int(rng.integers(0, src_h - ch + 1))
    crop = Image.fromarray(img[y0 : y0 + ch, x0 : x0 + cw])
    return np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR))


def _procedural(name: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded low-frequency stripes or smooth noise over a muted base colour."""
    base = np.array(list(PLAIN_COLORS.values())[int(rng.integers(len(PLAIN_COLORS)))], float)
    ys, xs = np.mgrid[0:height, 0:width].astype(float)
    if name == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 20)
        proj = xs * np.cos(angle) + ys * np.sin(angle)
        wave = np.sin(2 * np.pi * proj / period)
    else:
        cells = int(rng.integers(4, 12))
        coarse = rng.standard_normal((cells, cells)).astype(np.float32)
        wave = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
        wave = wave / max(1e-6, float(np.abs(wave).max()))
    return np.clip(base + 60.0 * wave[..., None], 0, 255)


def _tone(img: np.ndarray, strength: float) -> np.ndarray:
    """Blend toward mid grey so objects stay visible; strength 1 keeps the original contrast."""
    out = 127.5 + strength * (np.asarray(img, float) - 127.5)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_background(bg: Background, width: int, height: int) -> np.ndarray:
    """HxWx3 uint8 background, a pure function of the recipe (cached; returned read-only)."""
    return _render_background(bg.kind, bg.name, bg.seed, float(bg.strength), width, height)


@lru_cache(maxsize=64)
def _render_background(
    kind: str, name: str, seed: int, strength: float, width: int, height: int
) -> np.ndarray:
    if name not in BACKGROUND_NAMES.get(kind, ()):
        raise ValueError(f"unknown background {kind!r}/{name!r}; known: {BACKGROUND_NAMES}")
    rng = np.random.default_rng(seed)
    if kind == "plain":
        out = np.empty((height, width, 3), dtype=np.uint8)
        out[:] = PLAIN_COLORS[name]
    elif name in _PROCEDURAL_TEXTURES:
        out = _tone(_procedural(name, width, height, rng), strength)
    else:
        out = _tone(_crop_resize(load_skimage_rgb(name), width, height, rng), strength)
    out.flags.writeable = False
    return out
