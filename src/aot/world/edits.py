"""Local edits of a scene (add / remove / replace an object) and image-level object painting.

Edits act on the scene graph, and rendering is deterministic, so an edited scene re-renders with
pixels changed only inside the edit box while its ground truth is re-derived exactly with
``answer_spec``. ``paint_object`` applies the very same painter to arbitrary images.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from aot.world.questions import try_answer_spec
from aot.world.scene import (
    COLORS,
    SHAPES,
    SIZES,
    Box,
    Scene,
    SceneObject,
    _paint_object,
    box_inside,
    boxes_separated,
)

EDIT_KINDS: tuple[str, ...] = ("add", "remove", "replace")


@dataclass(frozen=True)
class Edit:
    """A local edit: ``box`` is the new object's box (add) or a box containing the target."""

    kind: str
    box: Box
    shape: str | None = None
    color: str | None = None


def _contains(outer: Box, inner: Box) -> bool:
    return (
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and inner[2] <= outer[2]
        and inner[3] <= outer[3]
    )


def _check_vocab(edit: Edit) -> None:
    if edit.shape is not None and edit.shape not in SHAPES:
        raise ValueError(f"edit shape {edit.shape!r} unknown; known: {list(SHAPES)}")
    if edit.color is not None and edit.color not in COLORS:
        raise ValueError(f"edit color {edit.color!r} unknown; known: {list(COLORS)}")


def _target(scene: Scene, box: Box) -> SceneObject:
    """The single object whose box lies inside ``box`` (an ambiguous edit is an error)."""
    inside = [o for o in scene.objects if _contains(box, o.box)]
    if len(inside) != 1:
        raise ValueError(f"edit box {box} contains {len(inside)} objects; exactly 1 is needed")
    return inside[0]


def _add(scene: Scene, edit: Edit, size: str) -> Scene:
    if edit.shape is None or edit.color is None:
        raise ValueError("an 'add' edit needs both shape and color")
    if size not in SIZES:
        raise ValueError(f"size {size!r} unknown; known: {list(SIZES)}")
    if not box_inside(edit.box, scene.width, scene.height):
        raise ValueError(f"add box {edit.box} leaves the {scene.width}x{scene.height} image")
    for o in scene.objects:
        if not boxes_separated(edit.box, o.box, 0):
            raise ValueError(f"add box {edit.box} overlaps object {o.object_id} at {o.box}")
    new_id = max((o.object_id for o in scene.objects), default=-1) + 1
    new = SceneObject(new_id, edit.shape, edit.color, size, tuple(int(v) for v in edit.box))
    return replace(scene, objects=scene.objects + (new,))


def apply_edit(scene: Scene, edit: Edit, size: str = "medium") -> Scene:
    """A new scene with the edit applied; ``size`` labels an added object (its box is given)."""
    _check_vocab(edit)
    if edit.kind == "add":
        return _add(scene, edit, size)
    if edit.kind == "remove":
        target = _target(scene, edit.box)
        return replace(scene, objects=tuple(o for o in scene.objects if o is not target))
    if edit.kind == "replace":
        if edit.shape is None and edit.color is None:
            raise ValueError("a 'replace' edit needs a new shape and/or color")
        target = _target(scene, edit.box)
        new = replace(target, shape=edit.shape or target.shape, color=edit.color or target.color)
        return replace(scene, objects=tuple(new if o is target else o for o in scene.objects))
    raise ValueError(f"edit kind {edit.kind!r} unknown; known: {list(EDIT_KINDS)}")


def paint_object(image: Image.Image, box: Box, shape: str, color: str) -> Image.Image:
    """A copy of any RGB image with a flat object painted in ``box`` by the scene painter."""
    if color not in COLORS:
        raise ValueError(f"color {color!r} unknown; known: {list(COLORS)}")
    arr = np.array(image.convert("RGB"))
    _paint_object(arr, shape, COLORS[color], tuple(int(v) for v in box))
    return Image.fromarray(arr, "RGB")


def find_free_box(
    scene: Scene, side: int, rng: np.random.Generator, gap: int = 2, tries: int = 200
) -> Box | None:
    """A random square box of ``side`` px clear of every object by ``gap`` px, or None."""
    if side > min(scene.width, scene.height):
        return None
    for _ in range(tries):
        x0 = int(rng.integers(0, scene.width - side + 1))
        y0 = int(rng.integers(0, scene.height - side + 1))
        box = (x0, y0, x0 + side, y0 + side)
        if all(boxes_separated(box, o.box, gap) for o in scene.objects):
            return box
    return None


def answer_changed(scene: Scene, edited: Scene, record_spec: dict[str, Any] | str) -> bool:
    """True when the spec has a defined answer on both scenes and the answers differ.

    An edit that makes the question ill-posed (target gone or ambiguous) is NOT a change: the
    original label no longer applies, but no new label exists either.
    """
    before, after = try_answer_spec(scene, record_spec), try_answer_spec(edited, record_spec)
    return before is not None and after is not None and before != after


def edit_preserves_answer(scene: Scene, edit: Edit, spec: dict[str, Any] | str) -> bool:
    """True when the edited scene still has the same, defined answer for the spec."""
    before = try_answer_spec(scene, spec)
    return before is not None and try_answer_spec(apply_edit(scene, edit), spec) == before
