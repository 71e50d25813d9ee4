"""The Attacker's reward parts: SSIM integrity gate, ground-truth guard, efficacy, validity,
outside similarity and their composite."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aot.rewards.attack import (
    AttackRewardConfig,
    composite_reward,
    edit_validity,
    efficacy_reward,
    ground_truth_guard,
    imperceptibility,
    integrity_gate,
    judge_crop,
    judge_question,
    judged_validity,
    outside_similarity,
)
from aot.world import (
    Background,
    Edit,
    Scene,
    SceneObject,
    apply_edit,
    paint_object,
    target_boxes,
)

# A plain 112 px scene: two circles (counted), a blue square and a green star elsewhere.
SCENE = Scene(
    "reward_scene",
    112,
    112,
    Background("plain", "light_grey", 0),
    (
        SceneObject(0, "circle", "red", "medium", (10, 10, 32, 32)),
        SceneObject(1, "circle", "blue", "medium", (10, 60, 32, 82)),
        SceneObject(2, "square", "blue", "small", (70, 14, 86, 30)),
        SceneObject(3, "star", "green", "medium", (70, 70, 92, 92)),
    ),
)
COUNT_SPEC = {"family": "count", "filter": {"shape": "circle"}}
COUNT_RECORD = {
    "question": "How many circles are there?",
    "options": ["1", "2", "3", "4"],
    "answer": "B",
    "answer_text": "2",
    "spec": json.dumps(COUNT_SPEC),
    "target_boxes": target_boxes(SCENE, COUNT_SPEC),
}
FREE_BOX = (45, 88, 61, 104)  # clear of every object and of the dilated targets


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return np.asarray(SCENE.render())


def test_gate_fails_an_edit_on_a_target_and_passes_one_far_away(clean: np.ndarray) -> None:
    on_target = np.asarray(paint_object(SCENE.render(), (10, 10, 32, 32), "star", "yellow"))
    far = np.asarray(paint_object(SCENE.render(), FREE_BOX, "square", "purple"))
    boxes = COUNT_RECORD["target_boxes"]
    failed = integrity_gate(clean, on_target, boxes, threshold=0.9, margin=2)
    passed = integrity_gate(clean, far, boxes, threshold=0.9, margin=2)
    assert failed["gate"] == 0.0 and failed["target_ssim_min"] < 0.9
    assert passed["gate"] == 1.0 and passed["target_ssim_min"] == pytest.approx(1.0)
    assert integrity_gate(clean, far, [])["gate"] == 1.0  # no target (an existence "No")


def test_gate_dilation_sees_an_edit_hugging_the_box(clean: np.ndarray) -> None:
    hugging = np.asarray(paint_object(SCENE.render(), (33, 10, 49, 26), "square", "orange"))
    box = [(10, 10, 32, 32)]
    tight = integrity_gate(clean, hugging, box, margin=0)["target_ssim_min"]
    dilated = integrity_gate(clean, hugging, box, margin=4)["target_ssim_min"]
    assert tight == pytest.approx(1.0) and dilated < 0.95


def test_guard_rejects_adding_the_counted_category() -> None:
    boxes = COUNT_RECORD["target_boxes"]
    spec = COUNT_RECORD["spec"]
    added_circle = ground_truth_guard(
        "add", FREE_BOX, boxes, shape="circle", colour="green", spec=spec, scene=SCENE
    )
    assert added_circle["gt_ok"] == 0.0 and added_circle["gt_forbidden"] == 1.0
    # Same without the graph: the category check alone still rejects it.
    no_graph = ground_truth_guard("add", FREE_BOX, boxes, shape="circle", colour="green", spec=spec)
    assert no_graph["gt_ok"] == 0.0
    square = ground_truth_guard(
        "add", FREE_BOX, boxes, shape="square", colour="green", spec=spec, scene=SCENE
    )
    assert square["gt_ok"] == 1.0, square["gt_reason"]


def test_guard_rejects_overlap_removal_of_counted_and_graph_conflicts() -> None:
    boxes, spec = COUNT_RECORD["target_boxes"], COUNT_RECORD["spec"]
    near = (34, 12, 50, 28)  # 2 px from the red circle: inside the 4 px margin
    assert (
        ground_truth_guard("add", near, boxes, shape="square", colour="green", spec=spec)[
            "gt_overlap"
        ]
        == 1.0
    )
    removed = ground_truth_guard("remove", (10, 60, 32, 82), [], spec=spec, scene=SCENE)
    assert removed["gt_ok"] == 0.0  # a circle removed changes the count (category check)
    over_square = ground_truth_guard(
        "add", (72, 16, 88, 32), boxes, shape="star", colour="red", spec=spec, scene=SCENE
    )
    assert over_square["gt_ok"] == 0.0 and over_square["gt_answer_changed"] == 1.0
    fine = ground_truth_guard(
        "replace", (70, 14, 86, 30), boxes, shape="hexagon", colour="red", spec=spec, scene=SCENE
    )
    assert fine["gt_ok"] == 1.0, fine["gt_reason"]


def test_guard_uses_the_exact_re_derived_answer() -> None:
    """Spatial: 'the star' must stay unique; replacing the square by a star is caught by the
    category check, and by the graph when that check is bypassed (shape given as None)."""
    spec = {"family": "spatial", "a": {"shape": "star"}, "b": {"shape": "square"}}
    boxes = target_boxes(SCENE, spec)
    # A replace that keeps the shape (only recolours) of a non-target object is allowed ...
    ok = ground_truth_guard(
        "replace", (10, 60, 32, 82), boxes, shape="circle", colour="red", spec=spec, scene=SCENE
    )
    assert ok["gt_ok"] == 1.0, ok["gt_reason"]
    # ... while removing the only square (a target) overlaps the target zone.
    assert (
        ground_truth_guard("remove", (70, 14, 86, 30), boxes, spec=spec, scene=SCENE)["gt_ok"]
        == 0.0
    )


def test_efficacy_counts_consecutive_failures_only_after_a_correct_clean_answer() -> None:
    rec = COUNT_RECORD
    right, wrong = "\\boxed{2}", "\\boxed{3}"
    clean_right = [right] * 3
    assert efficacy_reward([wrong] * 3, rec, clean_right)["efficacy"] == 1.0
    two_of_three = efficacy_reward([wrong, wrong, right], rec, clean_right)
    assert two_of_three["efficacy"] == 0.0 and two_of_three["edited_wrong_rate"] == pytest.approx(
        2 / 3
    )
    graded = efficacy_reward([wrong, wrong, right], rec, clean_right, graded=True)
    assert graded["efficacy"] == pytest.approx(2 / 3)
    clean_wrong = efficacy_reward([wrong] * 3, rec, [right, wrong, right])
    assert clean_wrong["efficacy"] == 0.0 and clean_wrong["clean_ok"] == 0.0
    lenient = efficacy_reward([wrong] * 3, rec, [right, wrong, right], clean_min=0.5)
    assert lenient["efficacy"] == 1.0
    unconditional = efficacy_reward([wrong] * 3, rec, None, require_clean_correct=False)
    assert unconditional["efficacy"] == 1.0
    assert efficacy_reward(["no answer"] * 3, rec, clean_right)["efficacy"] == 1.0  # unparsed
    with pytest.raises(ValueError, match="clean answers"):
        efficacy_reward([wrong], rec, None)


def test_validity_of_add_remove_and_replace(clean: np.ndarray) -> None:
    filled = np.asarray(paint_object(SCENE.render(), FREE_BOX, "triangle", "orange"))
    assert edit_validity(filled, clean, FREE_BOX, "add", "triangle", "orange")["valid"] == 1.0
    wrong_shape = edit_validity(filled, clean, FREE_BOX, "add", "circle", "orange")
    assert wrong_shape["valid"] == 0.0 and wrong_shape["colour_ok"] == 1.0
    assert (
        edit_validity(filled, clean, FREE_BOX, "add", "circle", "orange", checks=("colour",))[
            "valid"
        ]
        == 1.0
    )
    assert edit_validity(clean, clean, FREE_BOX, "add", "triangle", "orange")["valid"] == 0.0
    square = SCENE.get_object(2)
    background = np.asarray(apply_edit(SCENE, Edit("remove", square.box)).render())
    assert edit_validity(background, background, square.box, "remove")["valid"] == 1.0
    kept = edit_validity(clean, background, square.box, "remove")
    assert kept["valid"] == 0.0 and kept["residual"] > 0.9
    replaced = np.asarray(apply_edit(SCENE, Edit("replace", square.box, "diamond", "red")).render())
    assert (
        edit_validity(replaced, background, square.box, "replace", "diamond", "red")["valid"] == 1.0
    )


def test_outside_similarity(clean: np.ndarray) -> None:
    inside = np.asarray(paint_object(SCENE.render(), FREE_BOX, "square", "purple"))
    assert outside_similarity(clean, inside, [FREE_BOX])["outside_ssim"] == pytest.approx(1.0)
    everywhere = np.clip(
        inside.astype(int) + np.random.default_rng(0).integers(-40, 40, inside.shape), 0, 255
    )
    assert outside_similarity(clean, everywhere.astype(np.uint8), [FREE_BOX])["outside_ssim"] < 0.5


def test_outside_similarity_of_an_untouched_scene_is_exactly_one(clean: np.ndarray) -> None:
    from skimage.metrics import structural_similarity

    inside = np.asarray(paint_object(SCENE.render(), FREE_BOX, "square", "purple"))
    assert outside_similarity(clean, inside, [FREE_BOX])["outside_ssim"] == 1.0
    # what the shortcut stands for: scikit-image's map, 1 up to its rounding
    _, ssim_map = structural_similarity(clean, inside, channel_axis=-1, data_range=255, full=True)
    keep = np.ones(clean.shape[:2], dtype=bool)
    x0, y0, x1, y1 = FREE_BOX
    keep[max(0, y0 - 3) : y1 + 3, max(0, x0 - 3) : x1 + 3] = False
    assert abs(ssim_map.mean(axis=-1)[keep].mean() - 1.0) < 1e-12
    # one changed pixel outside the box: the map is computed and sees it
    touched = inside.copy()
    touched[y0 - 10, x0] = 255 - touched[y0 - 10, x0]
    assert outside_similarity(clean, touched, [FREE_BOX])["outside_ssim"] < 1.0 - 1e-6
    # a margin under half the SSIM window: windows that are scored see the box, so no shortcut
    assert outside_similarity(clean, inside, [FREE_BOX], margin=1)["outside_ssim"] < 1.0 - 1e-6


def test_imperceptible_perturbations_are_their_own_edit_type(clean: np.ndarray) -> None:
    painted = np.asarray(paint_object(SCENE.render(), FREE_BOX, "square", "purple"))
    visible = imperceptibility(clean, painted, FREE_BOX)
    assert visible["imperceptible"] == 0.0 and visible["visible"] > 0.3
    x0, y0, x1, y1 = FREE_BOX
    noise = np.random.default_rng(0).integers(-6, 7, (y1 - y0, x1 - x0, 3))
    subtle = clean.astype(int)
    subtle[y0:y1, x0:x1] += noise  # changes every pixel by at most 6 levels: below the eye
    subtle = np.clip(subtle, 0, 255).astype(np.uint8)
    result = imperceptibility(clean, subtle, FREE_BOX)
    assert result["imperceptible"] == 1.0 and result["visible"] == 0.0
    assert imperceptibility(clean, clean, FREE_BOX)["imperceptible"] == 0.0  # no edit at all


def test_composite_reward() -> None:
    cfg = AttackRewardConfig()
    base = {"gate": 1.0, "gt_ok": 1.0, "valid": 1.0, "efficacy": 1.0, "outside_ssim": 1.0}
    assert composite_reward(base, cfg)["reward"] == 1.0
    for key in ("gate", "gt_ok", "valid"):
        assert composite_reward({**base, key: 0.0}, cfg)["reward"] == 0.0
    off = AttackRewardConfig(validity_mode="off")
    assert composite_reward({**base, "valid": 0.0}, off)["reward"] == 1.0
    bonus = AttackRewardConfig(validity_weight=0.1, fidelity_weight=0.05)
    got = composite_reward({**base, "efficacy": 0.0, "outside_ssim": 0.8}, bonus)["reward"]
    assert math.isclose(got, 0.1 + 0.05 * 0.8)


def test_reward_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown key.*ssim_treshold"):
        AttackRewardConfig.from_dict({"ssim_treshold": 0.9})
    with pytest.raises(ValueError, match="validity_mode"):
        AttackRewardConfig.from_dict({"validity_mode": "soft"})
    with pytest.raises(ValueError, match="validity_judge"):
        AttackRewardConfig.from_dict({"validity_judge": "human"})
    with pytest.raises(ValueError, match="judge_min_side"):
        AttackRewardConfig.from_dict({"judge_min_side": 0})
    with pytest.raises(ValueError, match="temperature"):
        AttackRewardConfig.from_dict({"k": 3, "temperature": 0.0})
    with pytest.raises(ValueError, match="k must"):
        AttackRewardConfig.from_dict({"k": True})
    assert AttackRewardConfig.from_dict({"validity_checks": ["colour"]}).validity_checks == (
        "colour",
    )


def test_the_defender_judge_asks_about_the_planned_object_on_a_crop_of_its_box() -> None:
    assert judge_question("add", "star", "red") == ("Is there a red star in the image?", "Yes")
    assert judge_question("replace", "cross", "orange")[0].startswith("Is there an orange cross")
    assert judge_question("remove", "circle", "blue")[1] == "No"  # the removed one must be gone
    with pytest.raises(ValueError, match="unknown edit kind"):
        judge_question("blur", "star", "red")
    painted = np.asarray(paint_object(SCENE.render(), FREE_BOX, "square", "purple"))
    crop = judge_crop(painted, FREE_BOX, context=4, min_side=112)
    x0, y0, x1, y1 = FREE_BOX  # 16 x 16, grown by 4 px, clipped at the bottom edge (112)
    side_w, side_h = (x1 + 4) - (x0 - 4), min(112, y1 + 4) - (y0 - 4)
    assert min(crop.size) == 112 and crop.size[0] / crop.size[1] == pytest.approx(
        side_w / side_h, rel=0.02
    )
    centre = np.asarray(crop)[crop.size[1] // 2, crop.size[0] // 2]
    x, y = (x0 + x1) // 2, (y0 + y1) // 2
    assert np.abs(centre.astype(int) - painted[y, x].astype(int)).max() <= 8  # the box's content
    assert judge_crop(painted, FREE_BOX, 0, 8).size == (16, 16)  # never shrunk
    with pytest.raises(ValueError, match="outside"):
        judge_crop(painted, (200, 200, 220, 220))


def test_judged_validity_reads_yes_and_no_in_any_format() -> None:
    assert judged_validity("\\boxed{Yes}", "Yes") == {"valid": 1.0, "judge_parsed": 1.0}
    assert judged_validity("\\boxed{No}", "Yes") == {"valid": 0.0, "judge_parsed": 1.0}
    assert judged_validity("\\boxed{No}", "No")["valid"] == 1.0
    assert judged_validity("I cannot tell", "No") == {"valid": 0.0, "judge_parsed": 0.0}
