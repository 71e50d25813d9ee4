"""Ground truth of the question families, recomputed independently from the scene graph."""

import json
import re
from collections import Counter

import numpy as np
import pytest

from aot.world import (
    RELATIONS,
    SHAPES,
    QuestionConfig,
    Scene,
    WorldConfig,
    answer_spec,
    category_frequencies,
    make_questions,
    sample_scene,
    strict_relation,
    text_corpus,
)
from aot.world.scene import Background, SceneObject

_GAP = 3


def _dataset(n: int = 150, seed: int = 0) -> tuple[list[Scene], list[dict]]:
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, WorldConfig(), f"scene_{i}") for i in range(n)]
    popular = category_frequencies(scenes)
    records = [r for s in scenes for r in make_questions(s, rng, QuestionConfig(), popular)]
    return scenes, records


@pytest.fixture(scope="module")
def dataset():
    scenes, records = _dataset()
    return {s.scene_id: s for s in scenes}, records, category_frequencies(scenes)


def _find(scene: Scene, ref: dict) -> list:
    return [o for o in scene.objects if all(getattr(o, k) == v for k, v in ref.items())]


def _relations(a, b) -> list[str]:
    """Independent strict rule: separated by >= _GAP px on one axis, overlapping on the other."""
    ov_x = min(a[2], b[2]) > max(a[0], b[0])
    ov_y = min(a[3], b[3]) > max(a[1], b[1])
    out = []
    if ov_y and b[0] - a[2] >= _GAP:
        out.append("left")
    if ov_y and a[0] - b[2] >= _GAP:
        out.append("right")
    if ov_x and b[1] - a[3] >= _GAP:
        out.append("above")
    if ov_x and a[1] - b[3] >= _GAP:
        out.append("below")
    return out


def _check_mcq(r: dict) -> None:
    assert len(r["options"]) == 4 and len(set(r["options"])) == 4
    assert r["answer"] == "ABCD"[r["options"].index(r["answer_text"])]


def test_all_families_generated(dataset):
    _, records, _ = dataset
    counts = Counter(r["family"] for r in records)
    assert set(counts) == {"spatial", "attribute", "count", "existence"}
    assert counts["spatial"] > 50 and counts["attribute"] > 50


def test_spatial_ground_truth_and_unambiguous(dataset):
    scenes, records, _ = dataset
    for r in (r for r in records if r["family"] == "spatial"):
        spec, scene = json.loads(r["spec"]), scenes[r["scene_id"]]
        (a,), (b,) = _find(scene, spec["a"]), _find(scene, spec["b"])
        assert _relations(a.box, b.box) == [r["answer_text"]]
        assert sorted(r["options"]) == sorted(RELATIONS)
        assert r["target_boxes"] == [list(a.box), list(b.box)]
        for ref, obj in ((spec["a"], a), (spec["b"], b)):
            assert ref["shape"] == obj.shape and ref.get("color", obj.color) == obj.color
            assert ref["shape"] in r["question"]
        _check_mcq(r)


def test_attribute_ground_truth(dataset):
    scenes, records, _ = dataset
    for r in (r for r in records if r["family"] == "attribute"):
        spec, scene = json.loads(r["spec"]), scenes[r["scene_id"]]
        matches = [o for o in scene.objects if o.shape == spec["target"]["shape"]]
        assert len(matches) == 1
        assert r["answer_text"] == matches[0].color
        assert r["target_boxes"] == [list(matches[0].box)]
        _check_mcq(r)


def test_count_ground_truth(dataset):
    scenes, records, _ = dataset
    seen_zero = False
    for r in (r for r in records if r["family"] == "count"):
        spec, scene = json.loads(r["spec"]), scenes[r["scene_id"]]
        ((key, value),) = spec["filter"].items()
        counted = [o for o in scene.objects if getattr(o, key) == value]
        assert r["answer_text"] == str(len(counted))
        assert r["target_boxes"] == [list(o.box) for o in counted]
        assert value in r["question"] or value + "es" in r["question"]
        seen_zero |= not counted
        _check_mcq(r)
    assert seen_zero


def test_existence_ground_truth_and_pope_negatives(dataset):
    scenes, records, popular = dataset
    for r in (r for r in records if r["family"] == "existence"):
        spec, scene = json.loads(r["spec"]), scenes[r["scene_id"]]
        present = {(o.color, o.shape) for o in scene.objects}
        category = (spec["color"], spec["shape"])
        assert r["options"] == [] and r["answer"] == r["answer_text"]
        assert r["answer"] == ("Yes" if category in present else "No")
        if r["answer"] == "No":
            assert r["target_boxes"] == []
            if r["subtype"] == "adversarial":
                assert any(c == category[0] or s == category[1] for c, s in present)
            if r["subtype"] == "popular":
                absent = [p for p in popular if p not in present]
                assert category == absent[0]
        else:
            matches = _find(scene, {"color": category[0], "shape": category[1]})
            assert matches and r["target_boxes"] == [list(o.box) for o in matches]


def test_existence_yes_no_balanced_per_scene_and_subtype(dataset):
    _, records, _ = dataset
    per = Counter(
        (r["scene_id"], r["subtype"], r["answer"]) for r in records if r["family"] == "existence"
    )
    for (scene_id, subtype, _), n in per.items():
        assert n == 1
        assert per[(scene_id, subtype, "Yes")] == per[(scene_id, subtype, "No")] == 1
    assert {s for _, s, _ in per} == {"random", "popular", "adversarial"}


def test_answer_spec_reproduces_every_record(dataset):
    scenes, records, _ = dataset
    for r in records:
        assert answer_spec(scenes[r["scene_id"]], r["spec"]) == r["answer_text"]


def test_questions_deterministic_given_rng():
    assert _dataset(20, seed=3)[1] == _dataset(20, seed=3)[1]
    assert _dataset(20, seed=3)[1] != _dataset(20, seed=4)[1]


def test_strict_relation_cases():
    assert strict_relation((0, 0, 10, 10), (20, 5, 30, 15)) == "left"
    assert strict_relation((20, 5, 30, 15), (0, 0, 10, 10)) == "right"
    assert strict_relation((0, 0, 10, 10), (5, 20, 15, 30)) == "above"
    assert strict_relation((5, 20, 15, 30), (0, 0, 10, 10)) == "below"
    assert strict_relation((0, 0, 10, 10), (20, 20, 30, 30)) is None  # diagonal
    assert strict_relation((0, 0, 10, 10), (11, 0, 21, 10)) is None  # gap too small


def test_popular_fallback_and_frequencies():
    bg = Background("plain", "grey", 0)
    objs = (
        SceneObject(0, "circle", "red", "small", (0, 0, 16, 16)),
        SceneObject(1, "circle", "red", "small", (30, 0, 46, 16)),
        SceneObject(2, "star", "blue", "small", (60, 0, 76, 16)),
    )
    scene = Scene("t", 112, 112, bg, objs)
    assert category_frequencies([scene, scene]) == [("red", "circle"), ("blue", "star")]
    cfg = QuestionConfig(families=("existence",), pope_subtypes=("popular",))
    records = make_questions(scene, np.random.default_rng(0), cfg, None)
    negative = json.loads(next(r for r in records if r["answer"] == "No")["spec"])
    assert (negative["color"], negative["shape"]) == ("red", "square")


def test_question_config_validation():
    with pytest.raises(ValueError, match="colour_of"):
        QuestionConfig(families=("colour_of",))
    with pytest.raises(ValueError, match="n_options"):
        QuestionConfig(n_options=7)
    with pytest.raises(ValueError, match="per_famly"):
        QuestionConfig.from_dict({"per_famly": 2})
    assert QuestionConfig.from_dict({"families": ["count"]}).families == ("count",)


def test_per_family_and_n_options():
    rng = np.random.default_rng(0)
    scene = sample_scene(rng, WorldConfig(min_objects=5, max_objects=5), "x")
    cfg = QuestionConfig(families=("count", "existence"), per_family=2, n_options=3)
    records = make_questions(scene, rng, cfg)
    fams = Counter(r["family"] for r in records)
    assert fams == {"count": 2, "existence": 12}
    assert all(len(r["options"]) == 3 for r in records if r["family"] == "count")
    assert len({r["record_id"] for r in records}) == len(records)


def test_text_corpus_covers_generated_questions():
    corpus = text_corpus()
    strings = set(corpus)
    vocab = {w for s in corpus for w in re.findall(r"\w+", s)}
    _, records = _dataset(50, seed=9)
    for r in records:
        assert r["question"] in strings
        assert r["answer"] in strings and r["answer_text"] in strings
        assert set(r["options"]) <= strings
        assert set(re.findall(r"\w+", r["question"])) <= vocab
    assert {"crosses", "an", "orange"} <= vocab and all(s in vocab for s in SHAPES)
