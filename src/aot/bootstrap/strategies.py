"""Hard-distractor strategies: which category to implant (and, for spatial, where).

The probe in ``exp-defender.md`` found a tiny Defender fooled mostly by distractors that look
like a wrong answer (a wrong option's colour cost 23 points, a random one little), so each family
gets a strategy that builds such a lure. Every strategy only returns categories the record's
``Forbidden`` set lets through; the proposer still verifies the answer on the edited graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aot.bootstrap.categories import SIMILAR_COLORS, SIMILAR_SHAPES, Forbidden
from aot.world import Box, Scene, SceneObject
from aot.world.questions import resolve

STRATEGIES: tuple[str, ...] = (
    "random",
    "wrong_option_color",
    "counted_color_other_shape",
    "counted_shape_other_color",
    "opposite_side_lure",
    "shared_attribute",
)


@dataclass(frozen=True)
class Choice:
    """A category to implant; ``near`` is a preferred box centre and ``away_from`` the
    reference object whose far side a spatial lure must land on."""

    strategy: str
    color: str
    shape: str
    near: tuple[float, float] | None = None
    away_from: tuple[Box, Box] | None = None


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))] if items else None


def _prefer(rng: np.random.Generator, similar: Sequence[str], pool: Sequence[str]) -> str | None:
    """A similar item (half the time, when one is in the pool), else any pool item."""
    close = [x for x in similar if x in pool]
    return _pick(rng, close) if close and rng.random() < 0.5 else _pick(rng, list(pool))


def random_choice(
    rng: np.random.Generator, forbidden: Forbidden, colors: Sequence[str], shapes: Sequence[str]
) -> Choice | None:
    """Any allowed category, uniformly: the baseline strategy."""
    allowed = [(c, s) for c in colors for s in shapes if not forbidden.blocks(c, s)]
    pair = _pick(rng, allowed)
    return Choice("random", *pair) if pair else None


def _attribute(spec: dict, record: dict, ctx: _Ctx) -> Choice | None:
    """A wrong option's colour on another shape: the model may report the visible colour."""
    wrong = [o for o in record["options"] if o != record["answer_text"] and o in ctx.colors]
    color = _pick(ctx.rng, wrong)
    target_shape = spec["target"]["shape"]
    shapes = [s for s in ctx.shapes if not ctx.forbidden.blocks(color, s)] if color else []
    shape = _prefer(ctx.rng, SIMILAR_SHAPES.get(target_shape, ()), shapes)
    return Choice("wrong_option_color", color, shape) if color and shape else None


def _count(spec: dict, ctx: _Ctx) -> Choice | None:
    """Look-alikes of the counted objects that must not be counted."""
    filt = spec["filter"]
    if "shape" in filt:
        counted = [o.color for o in ctx.scene.objects if o.shape == filt["shape"]]
        color = _pick(ctx.rng, counted or list(ctx.colors))
        shapes = [s for s in ctx.shapes if not ctx.forbidden.blocks(color, s)]
        shape = _prefer(ctx.rng, SIMILAR_SHAPES.get(filt["shape"], ()), shapes)
        return Choice("counted_color_other_shape", color, shape) if shape else None
    counted = [o.shape for o in ctx.scene.objects if o.color == filt["color"]]
    shape = _pick(ctx.rng, counted or list(ctx.shapes))
    colors = [c for c in ctx.colors if not ctx.forbidden.blocks(c, shape)]
    color = _prefer(ctx.rng, SIMILAR_COLORS.get(filt["color"], ()), colors)
    return Choice("counted_shape_other_color", color, shape) if color else None


def _centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _spatial(spec: dict, ctx: _Ctx) -> Choice | None:
    """An object sharing a target's shape or colour, on the other side of the other target."""
    objs: list[SceneObject] = [resolve(ctx.scene, spec["a"]), resolve(ctx.scene, spec["b"])]
    order = ctx.rng.permutation(2)
    lured, anchor = objs[int(order[0])], objs[int(order[1])]
    looks = [(lured.color, s) for s in ctx.shapes if s != lured.shape]
    looks += [(c, lured.shape) for c in ctx.colors if c != lured.color]
    pair = _pick(ctx.rng, [p for p in looks if not ctx.forbidden.blocks(*p)])
    if pair is None:
        return None
    (lx, ly), (ax, ay) = _centre(lured.box), _centre(anchor.box)
    near = (2 * ax - lx, 2 * ay - ly)
    return Choice("opposite_side_lure", *pair, near=near, away_from=(lured.box, anchor.box))


def _existence(spec: dict, ctx: _Ctx) -> Choice | None:
    """The queried colour on another shape, or the queried shape in another colour."""
    color, shape = spec["color"], spec["shape"]
    if ctx.rng.random() < 0.5:
        shapes = [s for s in ctx.shapes if not ctx.forbidden.blocks(color, s)]
        other = _prefer(ctx.rng, SIMILAR_SHAPES.get(shape, ()), shapes)
        return Choice("shared_attribute", color, other) if other else None
    colors = [c for c in ctx.colors if not ctx.forbidden.blocks(c, shape)]
    other = _prefer(ctx.rng, SIMILAR_COLORS.get(color, ()), colors)
    return Choice("shared_attribute", other, shape) if other else None


@dataclass(frozen=True)
class _Ctx:
    scene: Scene
    forbidden: Forbidden
    rng: np.random.Generator
    colors: Sequence[str]
    shapes: Sequence[str]


def hard_choice(
    scene: Scene,
    spec: dict[str, Any],
    record: dict[str, Any],
    forbidden: Forbidden,
    rng: np.random.Generator,
    colors: Sequence[str],
    shapes: Sequence[str],
) -> Choice | None:
    """The family's hard strategy, or None when it has nothing allowed to offer."""
    ctx = _Ctx(scene, forbidden, rng, colors, shapes)
    family = spec["family"]
    if family == "attribute":
        return _attribute(spec, record, ctx)
    if family == "count":
        return _count(spec, ctx)
    if family == "spatial":
        return _spatial(spec, ctx)
    if family == "existence":
        return _existence(spec, ctx)
    raise ValueError(f"unknown question family {family!r}")


def on_far_side(box: Box, lured: Box, anchor: Box) -> bool:
    """True when ``box`` lies on the opposite side of ``anchor`` from ``lured``."""
    (bx, by), (lx, ly), (ax, ay) = _centre(box), _centre(lured), _centre(anchor)
    return (bx - ax) * (lx - ax) + (by - ay) * (ly - ay) < 0
