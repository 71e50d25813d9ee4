"""Stage 2 proposals: boxes off the targets, prompts never naming a question's category, and
ground truth checked by an independent recount on the edited graph."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from aot.bootstrap import (
    STRATEGIES,
    ProceduralFiller,
    implant,
    implant_candidates,
    parse_prompt,
    propose_distractors,
    propose_for_records,
)
from aot.bootstrap.implant import dilate
from aot.world import COLORS, Scene, SceneObject, strict_relation

MARGIN = 4


def _matches(obj: SceneObject, ref: dict) -> bool:
    return all(getattr(obj, k) == v for k, v in ref.items())


def _recount(scene: Scene, spec: dict) -> str | None:
    """Ground truth computed without aot.world.questions (an independent implementation)."""
    family = spec["family"]
    if family == "count":
        return str(sum(_matches(o, spec["filter"]) for o in scene.objects))
    if family == "existence":
        ref = {"color": spec["color"], "shape": spec["shape"]}
        return "Yes" if any(_matches(o, ref) for o in scene.objects) else "No"
    refs = [spec["target"]] if family == "attribute" else [spec["a"], spec["b"]]
    found = [[o for o in scene.objects if _matches(o, r)] for r in refs]
    if any(len(f) != 1 for f in found):
        return None
    if family == "attribute":
        return found[0][0].color
    return strict_relation(found[0][0].box, found[1][0].box)


def _names_forbidden(spec: dict, color: str, shape: str) -> bool:
    """The prompt rules of the brief, written out per family."""
    family = spec["family"]
    if family == "count":
        return spec["filter"].get("shape") == shape or spec["filter"].get("color") == color
    if family == "existence":
        return (spec["color"], spec["shape"]) == (color, shape)
    if family == "attribute":
        return spec["target"]["shape"] == shape
    return any(
        _matches(SceneObject(0, shape, color, "small", (0, 0, 1, 1)), r)
        for r in (spec["a"], spec["b"])
    )


def _overlaps(a, b) -> bool:  # noqa: ANN001
    return max(a[0], b[0]) < min(a[2], b[2]) and max(a[1], b[1]) < min(a[3], b[3])


@pytest.fixture(scope="module")
def proposals(extended):  # noqa: ANN001, ANN201
    exts, records = extended
    scenes = {e.scene.scene_id: e.scene for e in exts}
    rng = np.random.default_rng(5)
    out = []
    for rec in records.to_dict("records"):
        props = propose_distractors(scenes[rec["scene_id"]], rec, rng, n=3, margin=MARGIN)
        out.extend((rec, p) for p in props)
    return scenes, out


def test_every_record_gets_proposals(extended, proposals) -> None:  # noqa: ANN001
    per_record = Counter(rec["record_id"] for rec, _ in proposals[1])
    assert len(per_record) == len(extended[1])
    assert min(per_record.values()) >= 2


def test_boxes_avoid_targets_and_objects_and_stay_inside(proposals) -> None:  # noqa: ANN001
    scenes, pairs = proposals
    for rec, p in pairs:
        scene = scenes[rec["scene_id"]]
        x0, y0, x1, y1 = p.box
        assert 0 <= x0 < x1 <= scene.width and 0 <= y0 < y1 <= scene.height
        assert not any(_overlaps(p.box, dilate(b, MARGIN)) for b in rec["target_boxes"])
        assert not any(_overlaps(p.box, o.box) for o in scene.objects)


def test_prompts_never_name_a_forbidden_category(proposals) -> None:  # noqa: ANN001
    for rec, p in proposals[1]:
        size, color, shape = parse_prompt(p.prompt)
        assert (color, shape, size) == (p.color, p.shape, p.size)
        assert not _names_forbidden(json.loads(rec["spec"]), color, shape), (rec["question"], p)


def test_ground_truth_survives_every_implant(proposals, extended) -> None:  # noqa: ANN001
    scenes, pairs = proposals
    images = {e.scene.scene_id: e.image for e in extended[0]}
    filler = ProceduralFiller()
    for rec, p in pairs[::7]:  # every 7th pair also goes through the pixels
        image, edited = implant(images[rec["scene_id"]], scenes[rec["scene_id"]], p, filler)
        before, after = np.asarray(images[rec["scene_id"]]), np.asarray(image)
        outside = np.ones(before.shape[:2], bool)
        outside[p.box[1] : p.box[3], p.box[0] : p.box[2]] = False
        assert np.array_equal(before[outside], after[outside])
        new = edited.objects[-1]
        assert (after[edited.object_mask(new.object_id)] == COLORS[p.color]).all()
    for rec, p in pairs:
        scene = scenes[rec["scene_id"]]
        obj = SceneObject(999, p.shape, p.color, p.size, p.box)
        edited = Scene(
            scene.scene_id, scene.width, scene.height, scene.background, scene.objects + (obj,)
        )
        assert _recount(edited, json.loads(rec["spec"])) == rec["answer_text"], (rec, p)


def test_hard_strategies_dominate_and_follow_their_rules(proposals) -> None:  # noqa: ANN001
    _, pairs = proposals
    strategies = Counter(p.strategy for _, p in pairs)
    assert set(strategies) <= set(STRATEGIES)
    assert strategies["random"] < 0.4 * len(pairs)
    for rec, p in pairs:
        spec = json.loads(rec["spec"])
        if p.strategy == "wrong_option_color":
            assert p.color in rec["options"] and p.color != rec["answer_text"]
        if p.strategy == "shared_attribute":
            assert (p.color == spec["color"]) != (p.shape == spec["shape"])


def test_attribute_wrong_option_share_follows_hard_prob(extended) -> None:  # noqa: ANN001
    exts, records = extended
    scenes = {e.scene.scene_id: e.scene for e in exts}
    attr = records[records["family"] == "attribute"].to_dict("records")
    for prob, low, high in ((1.0, 0.95, 1.0), (0.0, 0.0, 0.0)):
        rng = np.random.default_rng(0)
        props = [
            p
            for r in attr
            for p in propose_distractors(scenes[r["scene_id"]], r, rng, hard_prob=prob)
        ]
        share = np.mean([p.strategy == "wrong_option_color" for p in props])
        assert low <= share <= high


def test_spatial_lures_land_on_the_far_side(extended) -> None:  # noqa: ANN001
    exts, records = extended
    scenes = {e.scene.scene_id: e.scene for e in exts}
    rng = np.random.default_rng(3)
    lures = 0
    for rec in records[records["family"] == "spatial"].to_dict("records"):
        scene, spec = scenes[rec["scene_id"]], json.loads(rec["spec"])
        a, b = ([o for o in scene.objects if _matches(o, spec[k])][0] for k in ("a", "b"))
        for p in propose_distractors(scene, rec, rng, hard_prob=1.0):
            if p.strategy != "opposite_side_lure":
                continue
            lures += 1
            cx, cy = (p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2
            sides = []
            for lured, anchor in ((a, b), (b, a)):
                ax, ay = (anchor.box[0] + anchor.box[2]) / 2, (anchor.box[1] + anchor.box[3]) / 2
                lx, ly = (lured.box[0] + lured.box[2]) / 2, (lured.box[1] + lured.box[3]) / 2
                resembles = p.color == lured.color or p.shape == lured.shape
                sides.append(resembles and (cx - ax) * (lx - ax) + (cy - ay) * (ly - ay) < 0)
            assert any(sides)
    assert lures > 10


def test_candidate_table_and_implanted_images(extended) -> None:  # noqa: ANN001
    exts, records = extended
    scenes = {e.scene.scene_id: e.scene for e in exts}
    subset = records.head(12)
    cands = propose_for_records(subset, scenes, seed=0, n=2)
    assert cands["edited_image"].is_unique
    assert (
        cands["split"] == cands["clean_record_id"].map(subset.set_index("record_id")["split"])
    ).all()
    again = propose_for_records(subset, scenes, seed=0, n=2)
    assert cands["distractor_box"].tolist() == again["distractor_box"].tolist()
    images = {e.scene.scene_id: e.image for e in exts}
    edited = implant_candidates(cands, images, ProceduralFiller(), seed=0)
    assert set(edited) == set(cands["edited_image"])
    row = cands.iloc[0]
    diff = np.asarray(edited[row["edited_image"]]) != np.asarray(images[row["image"]])
    ys, xs = np.nonzero(diff.any(-1))
    x0, y0, x1, y1 = row["distractor_box"]
    assert len(xs) and xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
