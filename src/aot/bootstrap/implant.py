"""Stage 2 of AOT-SFT: propose semantic distractors for a question and implant them.

A proposal is a box plus a short prompt ("small red triangle"), as in the paper's MLLM proposer.
Its bbox check: inside the image, clear of every existing object (so the edited graph stays a
valid scene) and of the record's target boxes dilated by ``margin``. Its prompt check: never a
category the question depends on (``categories.forbidden_for_spec``). Each surviving proposal is
then verified on the graph: the answer after the edit must be defined and unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from aot.bootstrap.categories import forbidden_for_spec, make_prompt
from aot.bootstrap.fillers import Filler
from aot.bootstrap.strategies import Choice, hard_choice, on_far_side, random_choice
from aot.world import COLORS, SHAPES, SIZES, Box, Edit, Scene, apply_edit, edit_preserves_answer
from aot.world.questions import UndefinedAnswer
from aot.world.scene import boxes_separated, place_box

logger = logging.getLogger(__name__)

_BOX_TRIES = 30


@dataclass(frozen=True)
class Proposal:
    """One distractor: where (``box``), what (``prompt`` = size colour shape) and why
    (``strategy``). ``size`` is the world size label closest to the box side."""

    box: Box
    prompt: str
    shape: str
    color: str
    size: str = "medium"
    strategy: str = "random"
    edit_kind: str = "add"


def dilate(box: Sequence[int], margin: int) -> Box:
    """The box grown by ``margin`` px on every side (may extend past the image)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return x0 - margin, y0 - margin, x1 + margin, y1 + margin


def box_is_free(box: Box, scene: Scene, targets: Sequence[Box], gap: int) -> bool:
    """The bbox check: inside the image, ``gap`` px from every object, off every target zone."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= scene.width and 0 <= y0 < y1 <= scene.height):
        return False
    if not all(boxes_separated(box, o.box, gap) for o in scene.objects):
        return False
    return all(boxes_separated(box, t, 0) for t in targets)


def size_label(side: int, scene: Scene) -> str:
    """The size word whose objects in this scene are closest in side to ``side`` px."""
    seen: dict[str, list[int]] = {}
    for o in scene.objects:
        seen.setdefault(o.size, []).append(o.box[2] - o.box[0])
    if not seen:
        return "medium"
    return min(seen, key=lambda s: (abs(np.mean(seen[s]) - side), SIZES[s]))


def _place(
    choice: Choice,
    scene: Scene,
    targets: Sequence[Box],
    rng: np.random.Generator,
    size_range: tuple[int, int],
    gap: int,
    grid: int = 0,
) -> Box | None:
    """A free square box (inside one grid cell when ``grid``); near ``choice.near`` (and on the
    far side) for spatial lures."""
    for _ in range(_BOX_TRIES):
        side = int(rng.integers(size_range[0], size_range[1] + 1))
        box = place_box(rng, side, scene.width, scene.height, grid, near=choice.near)
        if not box_is_free(box, scene, targets, gap):
            continue
        if choice.away_from is not None and not on_far_side(box, *choice.away_from):
            continue
        return box
    return None


def propose_distractors(
    scene: Scene,
    record: Mapping[str, Any],
    rng: np.random.Generator,
    n: int = 4,
    size_range: tuple[int, int] = (14, 30),
    margin: int = 4,
    *,
    hard_prob: float = 0.8,
    gap: int = 2,
    colors: Sequence[str] = tuple(COLORS),
    shapes: Sequence[str] = SHAPES,
    tries: int = 20,
    grid: int = 0,
) -> list[Proposal]:
    """Up to ``n`` verified distractor proposals for one record (see the module docstring).

    With probability ``hard_prob`` an attempt uses the family's hard strategy (for attribute
    questions: a wrong option's colour), else a uniformly random allowed category. A record
    without a spec cannot be verified and gets no proposals.
    """
    if not record.get("spec"):
        return []
    spec = json.loads(record["spec"]) if isinstance(record["spec"], str) else record["spec"]
    forbidden = forbidden_for_spec(spec)
    targets = [dilate(b, margin) for b in record["target_boxes"]]
    out: list[Proposal] = []
    for _ in range(n * tries):
        if len(out) == n:
            break
        try:
            choice = None
            if rng.random() < hard_prob:
                choice = hard_choice(scene, spec, dict(record), forbidden, rng, colors, shapes)
            choice = choice or random_choice(rng, forbidden, colors, shapes)
        except UndefinedAnswer:
            logger.debug("record %s: spec undefined on its scene", record.get("record_id"))
            return out
        if choice is None or forbidden.blocks(choice.color, choice.shape):
            continue
        box = _place(choice, scene, targets, rng, size_range, gap, grid)
        if box is None or any(p.box == box for p in out):
            continue
        if not edit_preserves_answer(scene, Edit("add", box, choice.shape, choice.color), spec):
            continue
        size = size_label(box[2] - box[0], scene)
        prompt = make_prompt(size, choice.color, choice.shape)
        out.append(Proposal(box, prompt, choice.shape, choice.color, size, choice.strategy))
    return out


def implant(
    image: Image.Image,
    scene: Scene,
    proposal: Proposal,
    filler: Filler,
    rng: np.random.Generator | None = None,
) -> tuple[Image.Image, Scene]:
    """The image with the distractor filled in, and the graph with the intended object added.

    For an inexact (diffusion) filler the graph records what was asked for, not what was drawn.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    edited = filler.fill_box(image, proposal.box, proposal.prompt, rng)
    edit = Edit(proposal.edit_kind, proposal.box, proposal.shape, proposal.color)
    return edited, apply_edit(scene, edit, size=proposal.size)


def propose_for_records(
    records: pd.DataFrame,
    scenes: Mapping[str, Scene],
    seed: int,
    n: int = 4,
    size_range: tuple[int, int] = (14, 30),
    margin: int = 4,
    hard_prob: float = 0.8,
    grid: int = 0,
) -> pd.DataFrame:
    """Candidate pairs: every record column (split included) repeated per proposal, plus
    ``edited_image``, ``edit_kind``, ``distractor_box``, ``distractor_prompt``,
    ``distractor_color``, ``distractor_shape``, ``strategy`` and ``clean_record_id``.

    A pair's ``record_id`` and ``edited_image`` are both ``{record_id}-d{j}``, so the pair table
    is itself a valid record table (unique ids); ``clean_record_id`` keeps the source record."""
    rows: list[dict[str, Any]] = []
    for i, record in enumerate(tqdm(records.to_dict("records"), desc="propose", unit="record")):
        rng = np.random.default_rng([seed, i])
        scene = scenes[record["scene_id"]]
        for j, p in enumerate(
            propose_distractors(
                scene, record, rng, n, size_range, margin, hard_prob=hard_prob, grid=grid
            )
        ):
            pair_id = f"{record['record_id']}-d{j}"
            rows.append(
                {
                    **record,
                    "record_id": pair_id,
                    "clean_record_id": record["record_id"],
                    "edited_image": pair_id,
                    "edit_kind": p.edit_kind,
                    "distractor_box": list(p.box),
                    "distractor_prompt": p.prompt,
                    "distractor_color": p.color,
                    "distractor_shape": p.shape,
                    "strategy": p.strategy,
                }
            )
    logger.info("Proposed %d distractors for %d records", len(rows), len(records))
    return pd.DataFrame(rows)


def implant_candidates(
    candidates: pd.DataFrame, images: Mapping[str, Any], filler: Filler, seed: int
) -> dict[str, Image.Image]:
    """Edited images keyed by ``edited_image``; ``images`` (clean, by key) may be lazy loaders."""
    out: dict[str, Image.Image] = {}
    rows = candidates.to_dict("records")
    for i, row in enumerate(tqdm(rows, desc="implant", unit="pair")):
        loaded = images[row["image"]]
        clean = loaded() if callable(loaded) else loaded
        box = tuple(int(v) for v in row["distractor_box"])
        rng = np.random.default_rng([seed, i])
        out[row["edited_image"]] = filler.fill_box(clean, box, row["distractor_prompt"], rng)
    return out
