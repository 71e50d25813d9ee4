"""Question families with exact ground truth derived from the scene graph.

Every question carries a structured ``spec`` (a JSON-able dict). Objects are referred to by their
attributes, never by id, so ``answer_spec`` re-derives the answer on ANY scene, in particular on
an edited one: that is what lets an adversarial edit be checked for whether it flipped the answer.
When a spec no longer has a well-defined answer on a scene (its target vanished or became
ambiguous, or no spatial relation holds strictly), ``answer_spec`` raises ``UndefinedAnswer``.

Families: ``spatial`` (left/right/above/below between two unique objects), ``attribute`` (colour of
a uniquely shaped object), ``count`` (objects of a shape or of a colour) and ``existence``
(POPE-style yes/no with random / popular / adversarial negatives).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from itertools import product
from typing import Any

import numpy as np

from aot.world.scene import COLORS, SHAPES, Box, Scene, SceneObject, WorldConfig
from aot.world.schema import FAMILIES, NO, YES, answer_letter

RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
POPE_SUBTYPES: tuple[str, ...] = ("random", "popular", "adversarial")
# Empty pixels required between two boxes before a relation counts as unambiguous.
SPATIAL_MIN_GAP = 3
_PLURALS = {"cross": "crosses"}

SPATIAL_TEMPLATES = (
    "Where is {a} relative to {b}?",
    "Where is {a} located with respect to {b}?",
    "Relative to {b}, where is {a}?",
)
ATTRIBUTE_TEMPLATES = (
    "What color is {a}?",
    "What is the color of {a}?",
    "Which color does {a} have?",
)
COUNT_SHAPE_TEMPLATES = (
    "How many {shapes} are there?",
    "How many {shapes} are in the image?",
    "What is the number of {shapes} in the image?",
)
COUNT_COLOR_TEMPLATES = (
    "How many {color} objects are there?",
    "How many {color} objects are in the image?",
    "What is the number of {color} objects in the image?",
)
EXISTENCE_TEMPLATES = (
    "Is there {obj} in the image?",
    "Does the image contain {obj}?",
    "Is {obj} present in the image?",
)


class UndefinedAnswer(ValueError):
    """The spec has no well-defined answer on this scene (e.g. its target object vanished)."""


@dataclass(frozen=True)
class QuestionConfig:
    """Which questions to ask. ``colors``/``shapes`` are the vocabulary for distractor options
    and absent POPE categories; keep them equal to the WorldConfig's."""

    families: tuple[str, ...] = FAMILIES
    per_family: int = 1
    pope_subtypes: tuple[str, ...] = POPE_SUBTYPES
    n_options: int = 4
    colors: tuple[str, ...] = tuple(COLORS)
    shapes: tuple[str, ...] = SHAPES

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject unknown families/subtypes/vocabulary and impossible option counts by name."""
        _check_subset("families", self.families, FAMILIES)
        _check_subset("pope_subtypes", self.pope_subtypes, POPE_SUBTYPES)
        _check_subset("colors", self.colors, tuple(COLORS))
        _check_subset("shapes", self.shapes, SHAPES)
        if isinstance(self.per_family, bool) or not isinstance(self.per_family, int):
            raise ValueError(f"QuestionConfig.per_family must be an int, got {self.per_family!r}")
        if self.per_family < 1:
            raise ValueError(f"QuestionConfig.per_family must be >= 1, got {self.per_family}")
        if not 2 <= self.n_options <= min(len(RELATIONS), len(self.colors)):
            raise ValueError(
                f"QuestionConfig.n_options must be in [2, {min(len(RELATIONS), len(self.colors))}]"
                f", got {self.n_options}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuestionConfig:
        """Build from Kedro params (lists become tuples); unknown keys are rejected by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"QuestionConfig: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def for_world(cls, world: WorldConfig, **kwargs: Any) -> QuestionConfig:
        """A question config whose vocabulary matches the world's."""
        return cls(colors=world.colors, shapes=world.shapes, **kwargs)


def _check_subset(name: str, values: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(values, tuple) or not values:
        raise ValueError(f"QuestionConfig.{name} must be a non-empty tuple, got {values!r}")
    for v in values:
        if v not in allowed:
            raise ValueError(f"QuestionConfig.{name}: unknown value {v!r}; allowed: {allowed}")


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------


def strict_relation(a: Box, b: Box, gap: int = SPATIAL_MIN_GAP) -> str | None:
    """The relation of box ``a`` to box ``b`` if exactly one holds strictly, else None.

    "left" means a ends at least ``gap`` px before b starts horizontally AND their vertical
    extents overlap (so neither above nor below can hold); the other three are symmetric.
    """
    overlap_x = max(a[0], b[0]) < min(a[2], b[2])
    overlap_y = max(a[1], b[1]) < min(a[3], b[3])
    holds = {
        "left": overlap_y and a[2] + gap <= b[0],
        "right": overlap_y and b[2] + gap <= a[0],
        "above": overlap_x and a[3] + gap <= b[1],
        "below": overlap_x and b[3] + gap <= a[1],
    }
    true = [r for r, ok in holds.items() if ok]
    return true[0] if len(true) == 1 else None


def _matches(obj: SceneObject, ref: dict[str, str]) -> bool:
    return all(getattr(obj, key) == value for key, value in ref.items())


def resolve(scene: Scene, ref: dict[str, str]) -> SceneObject:
    """The single object matching an attribute reference; UndefinedAnswer if 0 or >1 match."""
    found = [o for o in scene.objects if _matches(o, ref)]
    if len(found) != 1:
        raise UndefinedAnswer(f"{len(found)} objects match {ref} in scene {scene.scene_id!r}")
    return found[0]


def answer_spec(scene: Scene, spec: dict[str, Any] | str) -> str:
    """Answer text of a spec on a scene (e.g. "left", "red", "3", "Yes")."""
    spec = json.loads(spec) if isinstance(spec, str) else spec
    family = spec["family"]
    if family == "spatial":
        rel = strict_relation(resolve(scene, spec["a"]).box, resolve(scene, spec["b"]).box)
        if rel is None:
            raise UndefinedAnswer(f"no strict spatial relation for {spec} in {scene.scene_id!r}")
        return rel
    if family == "attribute":
        return resolve(scene, spec["target"]).color
    if family == "count":
        return str(sum(_matches(o, spec["filter"]) for o in scene.objects))
    if family == "existence":
        ref = {"color": spec["color"], "shape": spec["shape"]}
        return YES if any(_matches(o, ref) for o in scene.objects) else NO
    raise ValueError(f"unknown question family {family!r}; known: {FAMILIES}")


def try_answer_spec(scene: Scene, spec: dict[str, Any] | str) -> str | None:
    """``answer_spec`` or None when the answer is undefined on this scene."""
    try:
        return answer_spec(scene, spec)
    except UndefinedAnswer:
        return None


def target_boxes(scene: Scene, spec: dict[str, Any]) -> list[list[int]]:
    """Boxes of the objects a spec is about (all matches for count/existence)."""
    family = spec["family"]
    if family == "spatial":
        return [list(resolve(scene, spec[k]).box) for k in ("a", "b")]
    if family == "attribute":
        return [list(resolve(scene, spec["target"]).box)]
    ref = spec["filter"] if family == "count" else {"color": spec["color"], "shape": spec["shape"]}
    return [list(o.box) for o in scene.objects if _matches(o, ref)]


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def _plural(shape: str) -> str:
    return _PLURALS.get(shape, shape + "s")


def _ref_text(ref: dict[str, str]) -> str:
    return f"the {ref['color']} {ref['shape']}" if "color" in ref else f"the {ref['shape']}"


def _with_article(color: str, shape: str) -> str:
    article = "an" if color[0] in "aeiou" else "a"
    return f"{article} {color} {shape}"


def _question_text(spec: dict[str, Any], template: str) -> str:
    family = spec["family"]
    if family == "spatial":
        return template.format(a=_ref_text(spec["a"]), b=_ref_text(spec["b"]))
    if family == "attribute":
        return template.format(a=_ref_text(spec["target"]))
    if family == "count":
        filt = spec["filter"]
        if "shape" in filt:
            return template.format(shapes=_plural(filt["shape"]))
        return template.format(color=filt["color"])
    return template.format(obj=_with_article(spec["color"], spec["shape"]))


def _templates(spec: dict[str, Any]) -> tuple[str, ...]:
    family = spec["family"]
    if family == "count":
        return COUNT_SHAPE_TEMPLATES if "shape" in spec["filter"] else COUNT_COLOR_TEMPLATES
    return {
        "spatial": SPATIAL_TEMPLATES,
        "attribute": ATTRIBUTE_TEMPLATES,
        "existence": EXISTENCE_TEMPLATES,
    }[family]


def _max_count_option(max_objects: int) -> int:
    return max(10, max_objects + 3)


def text_corpus(cfg_world: WorldConfig | None = None) -> list[str]:
    """Every string that can appear as question, option or answer (sorted, unique).

    Meant for training a tokenizer: all templates filled with every vocabulary item.
    """
    world = cfg_world or WorldConfig()
    shapes, colors = world.shapes, world.colors
    refs = [{"shape": s} for s in shapes] + [
        {"color": c, "shape": s} for c in colors for s in shapes
    ]
    specs: list[dict[str, Any]] = []
    specs += [{"family": "spatial", "a": a, "b": b} for a in refs for b in refs if a != b]
    specs += [{"family": "attribute", "target": {"shape": s}} for s in shapes]
    specs += [{"family": "count", "filter": {"shape": s}} for s in shapes]
    specs += [{"family": "count", "filter": {"color": c}} for c in colors]
    specs += [{"family": "existence", "color": c, "shape": s} for c in colors for s in shapes]
    out = {_question_text(spec, t) for spec in specs for t in _templates(spec)}
    out |= set(RELATIONS) | set(colors) | {YES, NO}
    out |= {str(n) for n in range(_max_count_option(world.max_objects) + 1)}
    out |= set("ABCD")
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def unique_ref(scene: Scene, obj: SceneObject) -> dict[str, str] | None:
    """Shortest attribute reference that picks out ``obj`` alone: shape, else colour+shape."""
    for ref in ({"shape": obj.shape}, {"color": obj.color, "shape": obj.shape}):
        if sum(_matches(o, ref) for o in scene.objects) == 1:
            return ref
    return None


def _pick(rng: np.random.Generator, items: Sequence[Any], k: int) -> list[Any]:
    """Up to ``k`` distinct items in random order."""
    order = rng.permutation(len(items))[: min(k, len(items))]
    return [items[int(i)] for i in order]


def _spatial_specs(scene: Scene, rng: np.random.Generator, k: int) -> list[dict[str, Any]]:
    refs = [(o, unique_ref(scene, o)) for o in scene.objects]
    pairs = [
        {"family": "spatial", "a": ra, "b": rb}
        for (a, ra), (b, rb) in product(refs, refs)
        if a is not b and ra and rb and strict_relation(a.box, b.box) is not None
    ]
    return _pick(rng, pairs, k)


def _attribute_specs(scene: Scene, rng: np.random.Generator, k: int) -> list[dict[str, Any]]:
    shapes = Counter(o.shape for o in scene.objects)
    unique = sorted(s for s, n in shapes.items() if n == 1)
    return [{"family": "attribute", "target": {"shape": s}} for s in _pick(rng, unique, k)]


def _count_specs(
    scene: Scene, rng: np.random.Generator, k: int, cfg: QuestionConfig
) -> list[dict[str, Any]]:
    """Count filters, mostly over attributes present in the scene, sometimes absent (count 0)."""
    specs: list[dict[str, Any]] = []
    for _ in range(20 * k):
        if len(specs) == k:
            break
        key = "shape" if rng.random() < 0.5 else "color"
        vocab = cfg.shapes if key == "shape" else cfg.colors
        present = sorted({getattr(o, key) for o in scene.objects})
        pool = present if present and rng.random() < 0.8 else list(vocab)
        spec = {"family": "count", "filter": {key: pool[int(rng.integers(len(pool)))]}}
        if spec not in specs:
            specs.append(spec)
    return specs


def _options(answer: str, family: str, rng: np.random.Generator, cfg: QuestionConfig) -> list[str]:
    """The true answer plus ``n_options - 1`` distractors, shuffled."""
    if family == "spatial":
        pool = [r for r in RELATIONS if r != answer]
    elif family == "attribute":
        pool = [c for c in cfg.colors if c != answer]
    else:
        top = max(int(answer) + 3, 5)
        pool = [str(n) for n in range(top + 1) if str(n) != answer]
    options = [answer] + _pick(rng, pool, cfg.n_options - 1)
    return [options[int(i)] for i in rng.permutation(len(options))]


def _negative(
    scene: Scene,
    rng: np.random.Generator,
    subtype: str,
    cfg: QuestionConfig,
    popular: Sequence[tuple[str, str]] | None,
) -> tuple[str, str] | None:
    """An absent (colour, shape) category chosen by the POPE strategy ``subtype``."""
    present = {(o.color, o.shape) for o in scene.objects}
    everything = [(c, s) for c in cfg.colors for s in cfg.shapes]
    if subtype == "popular":
        ranked = [tuple(p) for p in popular] if popular is not None else everything
        absent = [p for p in ranked if p not in present and p in everything]
        return absent[0] if absent else None
    if subtype == "adversarial":
        candidates = [
            p
            for p in everything
            if p not in present and any(p[0] == c or p[1] == s for c, s in present)
        ]
    else:
        candidates = [p for p in everything if p not in present]
    return candidates[int(rng.integers(len(candidates)))] if candidates else None


def _existence_specs(
    scene: Scene,
    rng: np.random.Generator,
    cfg: QuestionConfig,
    popular: Sequence[tuple[str, str]] | None,
) -> list[tuple[str, dict[str, Any]]]:
    """(subtype, spec) pairs: for each subtype ``per_family`` positive + negative pairs."""
    present = sorted({(o.color, o.shape) for o in scene.objects})
    out: list[tuple[str, dict[str, Any]]] = []
    if not present:
        return out
    for subtype in cfg.pope_subtypes:
        for _ in range(cfg.per_family):
            neg = _negative(scene, rng, subtype, cfg, popular)
            if neg is None:
                continue  # no negative -> skip the positive too, keeping yes/no balanced
            pos = present[int(rng.integers(len(present)))]
            for color, shape in (pos, neg):
                out.append((subtype, {"family": "existence", "color": color, "shape": shape}))
    return out


def _record(
    scene: Scene,
    spec: dict[str, Any],
    subtype: str,
    k: int,
    rng: np.random.Generator,
    cfg: QuestionConfig,
    seed: int,
) -> dict[str, Any]:
    """One schema record (column order of ``RECORD_COLUMNS``)."""
    family = spec["family"]
    templates = _templates(spec)
    question = _question_text(spec, templates[int(rng.integers(len(templates)))])
    answer_text = answer_spec(scene, spec)
    options = [] if family == "existence" else _options(answer_text, family, rng, cfg)
    return {
        "record_id": f"{scene.scene_id}-{family}-{k}",
        "scene_id": scene.scene_id,
        "image": scene.scene_id,
        "family": family,
        "subtype": subtype,
        "question": question,
        "options": options,
        "answer": answer_letter(options, answer_text) if options else answer_text,
        "answer_text": answer_text,
        "target_boxes": target_boxes(scene, spec),
        "spec": json.dumps(spec, sort_keys=True),
        "seed": int(seed),
    }


def make_questions(
    scene: Scene,
    rng: np.random.Generator,
    cfg: QuestionConfig,
    popular_categories: list[tuple[str, str]] | None = None,
    *,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Schema records for one scene; ``image`` defaults to the scene_id (the caller may reset it).

    ``popular_categories`` is the dataset's (colour, shape) list by frequency (see
    ``category_frequencies``); without it POPE "popular" negatives use the vocabulary order.
    ``seed`` is stored in each record for provenance.
    """
    by_family: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for family in cfg.families:
        if family == "spatial":
            specs = [("", s) for s in _spatial_specs(scene, rng, cfg.per_family)]
        elif family == "attribute":
            specs = [("", s) for s in _attribute_specs(scene, rng, cfg.per_family)]
        elif family == "count":
            specs = [("", s) for s in _count_specs(scene, rng, cfg.per_family, cfg)]
        else:
            specs = _existence_specs(scene, rng, cfg, popular_categories)
        by_family[family] = specs
    return [
        _record(scene, spec, subtype, k, rng, cfg, seed)
        for specs in by_family.values()
        for k, (subtype, spec) in enumerate(specs)
    ]


def category_frequencies(scenes: Iterable[Scene]) -> list[tuple[str, str]]:
    """(colour, shape) categories by number of object occurrences, most frequent first."""
    counts = Counter((o.color, o.shape) for scene in scenes for o in scene.objects)
    return [cat for cat, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
