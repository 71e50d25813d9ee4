"""Stage 1 of AOT-SFT: scene extension (the source becomes a small region of a larger scene).

The source image is pasted unchanged at a random offset into a canvas ``ratio`` times larger
(sides rounded to the 28-px Qwen2.5-VL patch grid), the filler paints the margins, and clutter
objects are added there. Every object box is shifted by the offset, and clutter drawn by an exact
filler is added to the scene graph, so every question's answer can be re-derived exactly.
Clutter never belongs to a category any question of the scene depends on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from aot.bootstrap.categories import Forbidden, allowed_categories, forbidden_for_specs, make_prompt
from aot.bootstrap.fillers import Filler
from aot.world import (
    SIZES,
    Box,
    Scene,
    SceneObject,
    WorldConfig,
    place_box,
    size_pixels,
    try_answer_spec,
)
from aot.world.scene import boxes_separated

logger = logging.getLogger(__name__)

PATCH = 28  # Qwen2.5-VL: 14-px patches merged 2x2
_PLACEMENT_TRIES = 80


@dataclass(frozen=True)
class ExtendedScene:
    """An extended image with its scene graph.

    ``scene`` holds the source objects shifted by ``offset`` plus, when ``exact`` (the filler
    reports what it drew), the clutter objects ``clutter_ids``. ``source_image`` is kept so the
    composition check can compare target pixels with the source.
    """

    image: Image.Image
    scene: Scene
    offset: tuple[int, int]
    source_id: str
    source_image: Image.Image
    clutter_ids: tuple[int, ...] = ()
    exact: bool = True

    @property
    def source_box(self) -> Box:
        """Where the source lies in the canvas."""
        dx, dy = self.offset
        return dx, dy, dx + self.source_image.width, dy + self.source_image.height

    def known_mask(self) -> np.ndarray:
        """Boolean HxW mask of the pasted source region."""
        mask = np.zeros((self.image.height, self.image.width), dtype=bool)
        x0, y0, x1, y1 = self.source_box
        mask[y0:y1, x0:x1] = True
        return mask

    def to_row(self) -> dict[str, Any]:
        """One row of an extended-scene table (images are stored separately, by scene id)."""
        return {
            "scene_id": self.scene.scene_id,
            "source_id": self.source_id,
            "offset_x": self.offset[0],
            "offset_y": self.offset[1],
            "width": self.scene.width,
            "height": self.scene.height,
            "n_clutter": len(self.clutter_ids),
            "clutter_ids": list(self.clutter_ids),
            "exact": self.exact,
            "graph": json.dumps(self.scene.to_dict()),
        }


def extended_from_row(
    row: Mapping[str, Any], image: Image.Image, source_image: Image.Image
) -> ExtendedScene:
    """Inverse of ``ExtendedScene.to_row`` given the stored images (for Kedro round trips)."""
    return ExtendedScene(
        image=image.convert("RGB"),
        scene=Scene.from_dict(json.loads(row["graph"])),
        offset=(int(row["offset_x"]), int(row["offset_y"])),
        source_id=str(row["source_id"]),
        source_image=source_image.convert("RGB"),
        clutter_ids=tuple(int(i) for i in row["clutter_ids"]),
        exact=bool(row["exact"]),
    )


def canvas_size(width: int, height: int, ratio: float) -> tuple[int, int]:
    """Canvas sides: source sides x ratio rounded to multiples of 28, never below the source."""
    if not ratio >= 1.0:
        raise ValueError(f"extension ratio must be >= 1, got {ratio}")

    def side(n: int) -> int:
        return max(-(-n // PATCH) * PATCH, int(round(n * ratio / PATCH)) * PATCH)

    return side(width), side(height)


def shift_scene(scene: Scene, offset: tuple[int, int], width: int, height: int) -> Scene:
    """The scene graph moved by ``offset`` into a ``width`` x ``height`` canvas (same ids)."""
    dx, dy = offset
    objects = tuple(
        replace(o, box=(o.box[0] + dx, o.box[1] + dy, o.box[2] + dx, o.box[3] + dy))
        for o in scene.objects
    )
    return replace(scene, width=width, height=height, objects=objects)


def _margin_box(
    rng: np.random.Generator,
    side: int,
    size: tuple[int, int],
    avoid: list[Box],
    gap: int,
    grid: int = 0,
) -> Box | None:
    """A random square box inside the canvas (in one grid cell when ``grid``), ``gap`` px clear
    of every box in ``avoid``."""
    width, height = size
    if side > min(width, height):
        return None
    for _ in range(_PLACEMENT_TRIES):
        box = place_box(rng, side, width, height, grid)
        if all(boxes_separated(box, other, gap) for other in avoid):
            return box
    return None


def _sizes_from(first: str, sizes: Sequence[str]) -> list[str]:
    """``first``, then the smaller sizes: thin margins still get (smaller) clutter."""
    ordered = sorted(sizes, key=lambda s: SIZES[s])
    return [first] + [s for s in reversed(ordered) if SIZES[s] < SIZES[first]]


def plan_clutter(
    scene: Scene,
    source_box: Box,
    n: int,
    forbidden: Forbidden,
    rng: np.random.Generator,
    world: WorldConfig,
    side_ref: int,
) -> list[SceneObject]:
    """Up to ``n`` clutter objects in the margins: outside the source box, apart from each other,
    and never of a forbidden category. ``side_ref`` is the source's short side (object sizes
    match the source's)."""
    categories = allowed_categories(forbidden, world.colors, world.shapes)
    if not categories:
        logger.debug("scene %s: every category is forbidden, no clutter", scene.scene_id)
        return []
    gap = max(2, world.min_gap)
    canvas = (scene.width, scene.height)
    taken: list[Box] = [source_box]
    next_id = max((o.object_id for o in scene.objects), default=-1) + 1
    out: list[SceneObject] = []
    for _ in range(n):
        color, shape = categories[int(rng.integers(len(categories)))]
        first = world.sizes[int(rng.integers(len(world.sizes)))]
        box, size = None, first
        for size in _sizes_from(first, world.sizes):
            side = size_pixels(size, side_ref)
            box = _margin_box(rng, side, canvas, taken, gap, world.grid)
            if box is not None:
                break
        if box is None:
            continue
        taken.append(box)
        out.append(SceneObject(next_id + len(out), shape, color, size, box))
    return out


def extend_scene(
    scene: Scene,
    image: Image.Image,
    ratio: float,
    rng: np.random.Generator,
    filler: Filler,
    clutter: tuple[int, int] = (1, 3),
    *,
    specs: Sequence[dict[str, Any] | str] = (),
    world: WorldConfig | None = None,
) -> ExtendedScene:
    """Extend one scene (see the module docstring). ``specs`` are the scene's question specs:
    clutter avoids every category they depend on. Clutter is only drawn by exact fillers; an
    inexact (diffusion) filler's own outpainting is the clutter, checked by the detector."""
    world = world or WorldConfig()
    width, height = canvas_size(image.width, image.height, ratio)
    # On a grid world the offset is whole cells, so source objects stay inside their cells.
    step = world.grid or 1
    offset = (
        step * int(rng.integers(0, (width - image.width) // step + 1)),
        step * int(rng.integers(0, (height - image.height) // step + 1)),
    )
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image.convert("RGB"), offset)
    known = np.zeros((height, width), dtype=bool)
    known[offset[1] : offset[1] + image.height, offset[0] : offset[0] + image.width] = True
    filled = filler.fill_margins(canvas, known, rng)
    shifted = shift_scene(scene, offset, width, height)
    source_box = (offset[0], offset[1], offset[0] + image.width, offset[1] + image.height)
    objects: list[SceneObject] = []
    if getattr(filler, "exact", False):
        n = int(rng.integers(clutter[0], clutter[1] + 1))
        side_ref = min(image.width, image.height)
        forbidden = forbidden_for_specs(specs)
        objects = plan_clutter(shifted, source_box, n, forbidden, rng, world, side_ref)
        for obj in objects:
            filled = filler.fill_box(
                filled, obj.box, make_prompt(obj.size, obj.color, obj.shape), rng
            )
    return ExtendedScene(
        image=filled,
        scene=replace(shifted, objects=shifted.objects + tuple(objects)),
        offset=offset,
        source_id=scene.scene_id,
        source_image=image.convert("RGB"),
        clutter_ids=tuple(o.object_id for o in objects),
        exact=bool(getattr(filler, "exact", False)),
    )


def scenes_from_table(scene_table: pd.DataFrame) -> list[Scene]:
    """Scene graphs from a scene table's JSON ``graph`` column."""
    return [Scene.from_dict(json.loads(graph)) for graph in scene_table["graph"]]


def extend_scenes(
    scenes: Sequence[Scene],
    images: Mapping[str, Any],
    records: pd.DataFrame,
    ratio: float,
    filler: Filler,
    clutter: tuple[int, int],
    seed: int,
    world: WorldConfig | None = None,
) -> list[ExtendedScene]:
    """Extend every scene; scene ``i`` gets its own generator seeded by ``(seed, i)``, so a
    scene's result does not depend on how many draws earlier scenes made. ``images`` values may
    be lazy loaders (Kedro partitions)."""
    specs = records.groupby("scene_id")["spec"].agg(list).to_dict()
    out = []
    for i, scene in enumerate(tqdm(scenes, desc="extend", unit="scene")):
        loaded = images[scene.scene_id]
        image = loaded() if callable(loaded) else loaded
        rng = np.random.default_rng([seed, i])
        out.append(
            extend_scene(
                scene,
                image,
                ratio,
                rng,
                filler,
                clutter,
                specs=specs.get(scene.scene_id, ()),
                world=world,
            )
        )
    return out


def _shift_boxes(boxes: Any, offset: tuple[int, int]) -> list[list[int]]:
    dx, dy = offset
    return [[int(b[0]) + dx, int(b[1]) + dy, int(b[2]) + dx, int(b[3]) + dy] for b in boxes]


def remap_records(records: pd.DataFrame, offsets: Mapping[str, tuple[int, int]]) -> pd.DataFrame:
    """Records with every target box shifted by its scene's offset (other columns unchanged).

    Records of scenes without an offset (not extended) are dropped, with a warning.
    """
    keep = records["scene_id"].isin(list(offsets))
    if not keep.all():
        logger.warning(
            "remap_records: dropping %d records of unextended scenes", int((~keep).sum())
        )
    out = records[keep].copy()
    out["target_boxes"] = [
        _shift_boxes(boxes, offsets[sid])
        for boxes, sid in zip(out["target_boxes"], out["scene_id"], strict=True)
    ]
    return out.reset_index(drop=True)


def verify_answers(records: pd.DataFrame, scenes: Mapping[str, Scene]) -> pd.DataFrame:
    """Re-derive each answer on the extended graph: adds ``extended_answer`` (None when
    undefined) and ``answer_preserved``. Records without a spec (user data) count as preserved."""
    out = records.copy()
    derived = [
        try_answer_spec(scenes[sid], spec) if spec else text
        for sid, spec, text in zip(out["scene_id"], out["spec"], out["answer_text"], strict=True)
    ]
    out["extended_answer"] = derived
    out["answer_preserved"] = [d == t for d, t in zip(derived, out["answer_text"], strict=True)]
    changed = int((~out["answer_preserved"]).sum())
    if changed:
        logger.warning("verify_answers: %d of %d answers changed by extension", changed, len(out))
    return out
