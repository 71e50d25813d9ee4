"""Which object categories a question depends on, and the prompt text that names a category.

Both stages of the AOT-SFT pipeline add objects to a scene (clutter in stage 1, distractors in
stage 2). An added object must never create a new instance of a category that a question refers
to, or the recorded ground truth silently goes stale (the paper's "Add another bicycle!" failure).
A question's spec names its categories through attribute references (``{"shape": ...}``,
``{"color": ...}`` or both), so the forbidden set is read straight off the specs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aot.world import COLORS, SHAPES

# Shapes that a small model (or a person at a glance) may confuse: used for "hard" distractors.
SIMILAR_SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("hexagon", "diamond"),
    "square": ("diamond", "hexagon", "cross"),
    "triangle": ("diamond", "star"),
    "star": ("cross", "triangle"),
    "hexagon": ("circle", "square"),
    "diamond": ("square", "triangle"),
    "cross": ("star", "square"),
}
# Colours that are neighbours in hue.
SIMILAR_COLORS: dict[str, tuple[str, ...]] = {
    "red": ("orange", "purple"),
    "green": ("yellow", "blue"),
    "blue": ("purple", "green"),
    "yellow": ("orange", "green"),
    "purple": ("blue", "red"),
    "orange": ("red", "yellow"),
}
SIZE_WORDS: tuple[str, ...] = ("small", "medium", "large")


@dataclass(frozen=True)
class Forbidden:
    """Categories an added object must not belong to.

    ``pairs`` are (colour, shape) categories, ``shapes`` forbid a shape in any colour and
    ``colors`` forbid a colour on any shape.
    """

    pairs: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    shapes: frozenset[str] = field(default_factory=frozenset)
    colors: frozenset[str] = field(default_factory=frozenset)

    def blocks(self, color: str, shape: str) -> bool:
        """True when an object of this colour and shape would be a new instance of a category."""
        return (color, shape) in self.pairs or shape in self.shapes or color in self.colors

    def __or__(self, other: Forbidden) -> Forbidden:
        return Forbidden(
            self.pairs | other.pairs, self.shapes | other.shapes, self.colors | other.colors
        )


def _from_ref(ref: dict[str, str]) -> Forbidden:
    """A reference forbids exactly the category it resolves by (shape, colour or both)."""
    color, shape = ref.get("color"), ref.get("shape")
    if color and shape:
        return Forbidden(pairs=frozenset({(color, shape)}))
    if shape:
        return Forbidden(shapes=frozenset({shape}))
    if color:
        return Forbidden(colors=frozenset({color}))
    return Forbidden()


def spec_refs(spec: dict[str, Any] | str) -> list[dict[str, str]]:
    """The attribute references a spec depends on (two for spatial, one otherwise)."""
    spec = json.loads(spec) if isinstance(spec, str) else spec
    family = spec["family"]
    if family == "spatial":
        return [dict(spec["a"]), dict(spec["b"])]
    if family == "attribute":
        return [dict(spec["target"])]
    if family == "count":
        return [dict(spec["filter"])]
    if family == "existence":
        return [{"color": spec["color"], "shape": spec["shape"]}]
    raise ValueError(f"unknown question family {family!r} in spec {spec}")


def forbidden_for_spec(spec: dict[str, Any] | str) -> Forbidden:
    """Categories whose new instance could change or blur this spec's answer.

    spatial: each target's identifying category; attribute: the queried shape (a second circle
    makes "the circle" ambiguous); count: the counted shape or colour; existence: the queried
    colour+shape (a new instance would turn a "No" into "Yes").
    """
    out = Forbidden()
    for ref in spec_refs(spec):
        out = out | _from_ref(ref)
    return out


def forbidden_for_specs(specs: Iterable[dict[str, Any] | str]) -> Forbidden:
    """Union over the specs of one scene (empty specs, i.e. user data, forbid nothing)."""
    out = Forbidden()
    for spec in specs:
        if spec:
            out = out | forbidden_for_spec(spec)
    return out


def allowed_categories(
    forbidden: Forbidden, colors: Iterable[str] = tuple(COLORS), shapes: Iterable[str] = SHAPES
) -> list[tuple[str, str]]:
    """Every (colour, shape) the forbidden set lets through, in vocabulary order."""
    return [(c, s) for c in colors for s in shapes if not forbidden.blocks(c, s)]


def make_prompt(size: str, color: str, shape: str) -> str:
    """Inpainting prompt for one object, e.g. ``"small red triangle"``."""
    return f"{size} {color} {shape}"


def _singular(word: str) -> str:
    """``"crosses"`` -> ``"cross"``, ``"circles"`` -> ``"circle"``; other words unchanged."""
    for cut in (0, 2, 1):
        stem = word[: len(word) - cut]
        if stem in SHAPES and (cut == 0 or word.endswith("es"[2 - cut :])):
            return stem
    return word


def parse_prompt(prompt: str) -> tuple[str | None, str, str]:
    """(size, colour, shape) named by a prompt such as ``"a small red triangle"``.

    The size is optional (the box fixes the pixel size); ValueError names the prompt when no
    known colour or shape is in it, so a typo in a prompt never paints a random object.
    """
    words = [w.strip(".,;:!?").lower() for w in prompt.split()]
    singular = [_singular(w) for w in words]
    size = next((w for w in words if w in SIZE_WORDS), None)
    color = next((w for w in words if w in COLORS), None)
    shape = next((w for w in singular if w in SHAPES), None)
    if color is None or shape is None:
        raise ValueError(
            f"prompt {prompt!r} must name a colour {list(COLORS)} and a shape {list(SHAPES)}"
        )
    return size, color, shape
