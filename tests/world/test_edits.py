"""Scene edits: exact new ground truth and pixels changed only inside the edit box."""

import numpy as np
import pytest
from PIL import Image

from aot.world import (
    COLORS,
    SHAPES,
    Edit,
    Scene,
    WorldConfig,
    answer_changed,
    answer_spec,
    apply_edit,
    edit_preserves_answer,
    find_free_box,
    paint_object,
    sample_scene,
    shape_mask,
    try_answer_spec,
)


def _scenes(n: int, seed: int = 0) -> list[Scene]:
    rng = np.random.default_rng(seed)
    cfg = WorldConfig(backgrounds={"plain": 1, "textured": 1, "photo": 1})
    return [sample_scene(rng, cfg, f"e{i}") for i in range(n)]


def _outside(box, shape) -> np.ndarray:
    mask = np.ones(shape[:2], dtype=bool)
    mask[box[1] : box[3], box[0] : box[2]] = False
    return mask


def _count(scene: Scene, **attrs) -> int:
    return sum(all(getattr(o, k) == v for k, v in attrs.items()) for o in scene.objects)


def test_add_increments_count_and_only_changes_box():
    rng = np.random.default_rng(1)
    done = 0
    for scene in _scenes(40):
        box = find_free_box(scene, 16, rng)
        if box is None:
            continue
        edited = apply_edit(scene, Edit("add", box, shape="circle", color="red"))
        spec = {"family": "count", "filter": {"shape": "circle"}}
        assert answer_spec(edited, spec) == str(_count(scene, shape="circle") + 1)
        assert answer_spec(edited, {"family": "existence", "color": "red", "shape": "circle"}) == (
            "Yes"
        )
        before, after = np.asarray(scene.render()), np.asarray(edited.render())
        out = _outside(box, before.shape)
        assert (before[out] == after[out]).all()
        new = edited.objects[-1]
        assert new.box == box and (after[edited.object_mask(new.object_id)] == COLORS["red"]).all()
        assert answer_changed(scene, edited, spec)
        done += 1
    assert done >= 30


def test_remove_decrements_count_and_restores_background():
    for scene in _scenes(40, seed=2):
        target = scene.objects[0]
        x0, y0, x1, y1 = target.box
        box = (max(0, x0 - 1), max(0, y0 - 1), min(scene.width, x1 + 1), min(scene.height, y1 + 1))
        if (
            sum(
                box[0] <= o.box[0]
                and box[1] <= o.box[1]
                and o.box[2] <= box[2]
                and o.box[3] <= box[3]
                for o in scene.objects
            )
            != 1
        ):
            continue
        edited = apply_edit(scene, Edit("remove", box))
        assert len(edited.objects) == len(scene.objects) - 1
        spec = {"family": "count", "filter": {"shape": target.shape}}
        assert answer_spec(edited, spec) == str(_count(scene, shape=target.shape) - 1)
        before, after = np.asarray(scene.render()), np.asarray(edited.render())
        out = _outside(box, before.shape)
        assert (before[out] == after[out]).all()
        empty = Scene(scene.scene_id, scene.width, scene.height, scene.background, ())
        bg = np.asarray(empty.render())
        assert (after[y0:y1, x0:x1] == bg[y0:y1, x0:x1]).all()


def test_replace_colour_changes_attribute_answer():
    checked = 0
    for scene in _scenes(40, seed=3):
        unique = [o for o in scene.objects if _count(scene, shape=o.shape) == 1]
        if not unique:
            continue
        target = unique[0]
        new_color = next(c for c in COLORS if c != target.color)
        edited = apply_edit(scene, Edit("replace", target.box, color=new_color))
        spec = {"family": "attribute", "target": {"shape": target.shape}}
        assert answer_spec(scene, spec) == target.color
        assert answer_spec(edited, spec) == new_color
        assert answer_changed(scene, edited, spec)
        before, after = np.asarray(scene.render()), np.asarray(edited.render())
        out = _outside(target.box, before.shape)
        assert (before[out] == after[out]).all()
        assert (after[edited.object_mask(target.object_id)] == COLORS[new_color]).all()
        checked += 1
    assert checked >= 30


def test_replace_shape_keeps_box_and_fills_it():
    scene = _scenes(1, seed=4)[0]
    target = scene.objects[0]
    new_shape = next(s for s in SHAPES if s != target.shape)
    edited = apply_edit(scene, Edit("replace", target.box, shape=new_shape))
    obj = edited.get_object(target.object_id)
    assert obj.shape == new_shape and obj.box == target.box and obj.color == target.color
    ys, xs = np.nonzero(edited.object_mask(obj.object_id))
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == target.box


def test_invalid_edits_raise():
    scene = _scenes(1, seed=5)[0]
    obj = scene.objects[0]
    with pytest.raises(ValueError, match="overlaps"):
        apply_edit(scene, Edit("add", obj.box, shape="star", color="red"))
    with pytest.raises(ValueError, match="leaves"):
        apply_edit(scene, Edit("add", (100, 100, 130, 130), shape="star", color="red"))
    with pytest.raises(ValueError, match="shape and color"):
        apply_edit(scene, Edit("add", (0, 0, 10, 10), shape="star"))
    with pytest.raises(ValueError, match="contains 0 objects"):
        apply_edit(scene, Edit("remove", (0, 0, 1, 1)))
    with pytest.raises(ValueError, match="shape and/or color"):
        apply_edit(scene, Edit("replace", obj.box))
    with pytest.raises(ValueError, match="teleport"):
        apply_edit(scene, Edit("teleport", obj.box))
    with pytest.raises(ValueError, match="pink"):
        apply_edit(scene, Edit("replace", obj.box, color="pink"))


def test_edit_preserves_answer_and_ill_posed_edits():
    scene = _scenes(1, seed=6)[0]
    box = find_free_box(scene, 16, np.random.default_rng(0))
    assert box is not None
    add_circle = Edit("add", box, shape="circle", color="red")
    other = next(s for s in SHAPES if s != "circle")
    assert edit_preserves_answer(scene, add_circle, {"family": "count", "filter": {"shape": other}})
    assert not edit_preserves_answer(
        scene, add_circle, {"family": "count", "filter": {"shape": "circle"}}
    )
    target = scene.objects[0]
    spec = {"family": "attribute", "target": {"color": target.color, "shape": target.shape}}
    gone = apply_edit(scene, Edit("remove", target.box))
    assert try_answer_spec(gone, spec) is None
    assert not answer_changed(scene, gone, spec)
    assert not edit_preserves_answer(scene, Edit("remove", target.box), spec)


def test_paint_object_on_arbitrary_image_matches_scene_painter():
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8))
    box = (10, 20, 40, 44)
    out = paint_object(base, box, "star", "blue")
    a, b = np.asarray(base), np.asarray(out)
    assert out is not base and out.size == base.size
    mask = np.zeros((90, 130), dtype=bool)
    mask[20:44, 10:40] = shape_mask("star", 30, 24)
    assert (b[mask] == COLORS["blue"]).all() and (b[~mask] == a[~mask]).all()
    with pytest.raises(ValueError, match="not inside"):
        paint_object(base, (120, 0, 140, 20), "star", "blue")

    scene = _scenes(1, seed=7)[0]
    empty = Scene(scene.scene_id, scene.width, scene.height, scene.background, ())
    img = empty.render()
    for o in scene.objects:
        img = paint_object(img, o.box, o.shape, o.color)
    assert img.tobytes() == scene.render().tobytes()
