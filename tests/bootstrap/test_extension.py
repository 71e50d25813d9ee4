"""Stage 1: the canvas grid, an unchanged paste, exact box remapping and safe clutter."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from aot.bootstrap import (
    Forbidden,
    ProceduralFiller,
    canvas_size,
    extend_scene,
    extend_scenes,
    extended_from_row,
    plan_clutter,
    verify_answers,
)
from aot.bootstrap.fillers import remove_palette_pixels
from aot.world import COLORS, SceneObject, answer_spec, target_boxes
from aot.world.scene import boxes_separated


def _by_scene(records):  # noqa: ANN001, ANN202
    return {sid: g.to_dict("records") for sid, g in records.groupby("scene_id")}


@pytest.mark.parametrize(
    ("side", "ratio", "expected"),
    [(112, 1.5, 168), (112, 1.0, 112), (112, 2.0, 224), (100, 1.3, 140)],
)
def test_canvas_side_is_a_multiple_of_28(side: int, ratio: float, expected: int) -> None:
    assert canvas_size(side, side, ratio) == (expected, expected)
    assert expected % 28 == 0 and expected >= side


def test_ratio_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="ratio"):
        canvas_size(112, 112, 0.9)


def test_extended_images_and_source_pixels(source, extended) -> None:  # noqa: ANN001
    scenes, _, images = source
    for ext in extended[0]:
        assert ext.image.size == (168, 168) and ext.image.width % 28 == 0
        dx, dy = ext.offset
        pasted = np.asarray(ext.image)[dy : dy + 112, dx : dx + 112]
        assert np.array_equal(pasted, np.asarray(images[ext.source_id]))
    offsets = {e.offset for e in extended[0]}
    assert len(offsets) > 5  # random offsets, not always the centre


def test_boxes_are_remapped_exactly(source, extended) -> None:  # noqa: ANN001
    scenes = {s.scene_id: s for s in source[0]}
    for ext in extended[0]:
        src, (dx, dy) = scenes[ext.source_id], ext.offset
        arr = np.asarray(ext.image)
        for obj in src.objects:
            moved = ext.scene.get_object(obj.object_id)
            assert moved.box == (obj.box[0] + dx, obj.box[1] + dy, obj.box[2] + dx, obj.box[3] + dy)
        for obj in ext.scene.objects:  # source objects and clutter alike
            assert (arr[ext.scene.object_mask(obj.object_id)] == COLORS[obj.color]).all()
    for rec in extended[1].to_dict("records"):
        ext = next(e for e in extended[0] if e.scene.scene_id == rec["scene_id"])
        assert rec["target_boxes"] == target_boxes(ext.scene, json.loads(rec["spec"]))


def test_clutter_is_in_the_margins_and_never_a_question_category(extended) -> None:  # noqa: ANN001
    exts, records = extended
    by_scene = _by_scene(records)
    n_clutter = 0
    for ext in exts:
        clutter = [o for o in ext.scene.objects if o.object_id in ext.clutter_ids]
        n_clutter += len(clutter)
        for i, obj in enumerate(clutter):
            assert boxes_separated(obj.box, ext.source_box, 1)
            assert all(boxes_separated(obj.box, other.box, 2) for other in clutter[i + 1 :])
            for rec in by_scene[ext.scene.scene_id]:
                spec = json.loads(rec["spec"])
                refs = {
                    "spatial": lambda s: [s["a"], s["b"]],
                    "attribute": lambda s: [s["target"]],
                    "count": lambda s: [s["filter"]],
                    "existence": lambda s: [{"color": s["color"], "shape": s["shape"]}],
                }[spec["family"]](spec)
                for ref in refs:  # independent of Forbidden: no ref may match the clutter
                    assert not all(getattr(obj, k) == v for k, v in ref.items()), (obj, ref)
    assert n_clutter >= len(exts)  # at least one clutter object per scene on average


def test_answers_rederived_on_the_extended_graph_are_unchanged(extended) -> None:  # noqa: ANN001
    exts, records = extended
    checked = verify_answers(records, {e.scene.scene_id: e.scene for e in exts})
    assert checked["answer_preserved"].all()
    assert (checked["extended_answer"] == records["answer_text"]).all()
    assert set(records["family"]) == {"spatial", "attribute", "count", "existence"}


def test_verify_answers_marks_a_record_the_clutter_changed(extended) -> None:  # noqa: ANN001
    exts, records = extended
    rec = records[records["family"] == "count"].iloc[0]
    ext = next(e for e in exts if e.scene.scene_id == rec["scene_id"])
    spec = json.loads(rec["spec"])
    shape = spec["filter"].get("shape", "circle")
    color = spec["filter"].get("color", "red")
    dup = SceneObject(99, shape, color, "small", (0, 0, 4, 4))
    scenes = {ext.scene.scene_id: replace(ext.scene, objects=ext.scene.objects + (dup,))}
    checked = verify_answers(records[records["scene_id"] == rec["scene_id"]], scenes)
    row = checked[checked["record_id"] == rec["record_id"]].iloc[0]
    assert not row["answer_preserved"]
    assert row["extended_answer"] == str(int(rec["answer_text"]) + 1)


def test_plan_clutter_uses_only_allowed_categories(source, world_cfg, rng) -> None:  # noqa: ANN001
    scene = source[0][0]
    forbid_all_but_one = Forbidden(
        shapes=frozenset(s for s in world_cfg.shapes if s != "star"),
        pairs=frozenset({("red", "star")}),
    )
    from aot.bootstrap import shift_scene

    big = shift_scene(scene, (30, 30), 224, 224)
    objs = plan_clutter(big, (30, 30, 142, 142), 20, forbid_all_but_one, rng, world_cfg, 112)
    assert objs and all(o.shape == "star" and o.color != "red" for o in objs)
    everything = Forbidden(colors=frozenset(world_cfg.colors))
    assert plan_clutter(big, (30, 30, 142, 142), 5, everything, rng, world_cfg, 112) == []


def test_extension_is_reproducible_and_seed_dependent(source, world_cfg) -> None:  # noqa: ANN001
    scenes, records, images = source
    filler = ProceduralFiller(world_cfg)
    runs = [extend_scenes(scenes[:4], images, records, 1.5, filler, (1, 3), s) for s in (1, 1, 2)]
    same = [
        np.array_equal(np.asarray(a.image), np.asarray(b.image))
        for a, b in zip(*runs[:2], strict=True)
    ]
    other = [a.offset == b.offset for a, b in zip(runs[0], runs[2], strict=True)]
    assert all(same) and not all(other)


def test_specs_steer_clutter_away_from_a_counted_shape(source, world_cfg) -> None:  # noqa: ANN001
    scene, image = source[0][0], source[2][source[0][0].scene_id]
    spec = {"family": "count", "filter": {"shape": "circle"}}
    for seed in range(15):
        ext = extend_scene(
            scene,
            image,
            2.0,
            np.random.default_rng(seed),
            ProceduralFiller(world_cfg),
            (3, 3),
            specs=[json.dumps(spec)],
            world=world_cfg,
        )
        clutter = [o for o in ext.scene.objects if o.object_id in ext.clutter_ids]
        assert clutter and all(o.shape != "circle" for o in clutter)
        assert answer_spec(ext.scene, spec) == answer_spec(scene, spec)


def test_extended_scene_table_round_trip(extended) -> None:  # noqa: ANN001
    ext = extended[0][3]
    row = pd.DataFrame([e.to_row() for e in extended[0]]).iloc[3].to_dict()
    assert extended_from_row(row, ext.image, ext.source_image) == ext


def test_remove_palette_pixels_erases_only_exact_object_colours() -> None:
    red = np.array(COLORS["red"], dtype=np.uint8)
    near_red = red.astype(np.int16)
    near_red[2] = near_red[2] + 1 if near_red[2] < 255 else near_red[2] - 1
    arr = np.full((6, 8, 3), 77, dtype=np.uint8)
    arr[:, 5:] = 200  # a second background colour on the right
    arr[2:4, 1:3] = red  # an object on the left background
    arr[2:4, 7] = red  # an object on the right background
    arr[0, 0] = near_red.astype(np.uint8)  # one step off the palette: background, kept
    out = remove_palette_pixels(arr)
    assert (out[2:4, 1:3] == 77).all()
    assert (out[2:4, 7] == 200).all()
    assert (out[0, 0] == near_red).all()
    untouched = np.ones(arr.shape[:2], dtype=bool)
    untouched[2:4, 1:3] = untouched[2:4, 7] = False
    assert (out[untouched] == arr[untouched]).all()
