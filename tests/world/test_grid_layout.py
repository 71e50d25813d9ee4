"""The grid layout: every object, clutter object and distractor sits inside one token cell."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aot.bootstrap import ProceduralFiller, extend_scene, propose_for_records
from aot.world import QuestionConfig, WorldConfig, make_questions, place_box, sample_scene

GRID = 28


def _in_one_cell(box, grid: int = GRID) -> bool:  # noqa: ANN001
    x0, y0, x1, y1 = box
    return x0 // grid == (x1 - 1) // grid and y0 // grid == (y1 - 1) // grid


@pytest.fixture(scope="module")
def grid_world() -> WorldConfig:
    return WorldConfig(image_size=112, max_objects=5, grid=GRID)


def test_every_sampled_object_is_inside_one_cell(grid_world: WorldConfig) -> None:
    rng = np.random.default_rng(0)
    boxes = [o.box for i in range(200) for o in sample_scene(rng, grid_world, f"s{i}").objects]
    assert len(boxes) > 400
    assert all(_in_one_cell(b) for b in boxes)
    # The free layout does straddle cells: the test would notice a grid that does nothing.
    free = WorldConfig(image_size=112, max_objects=5)
    loose = [o.box for i in range(50) for o in sample_scene(rng, free, f"f{i}").objects]
    assert not all(_in_one_cell(b) for b in loose)


def test_place_box_near_a_point_stays_in_a_cell_close_to_it() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        box = place_box(rng, 30, 168, 168, GRID, near=(84.0, 84.0))
        assert _in_one_cell(box) and box[2] - box[0] == GRID - 2
        assert abs((box[0] + box[2]) / 2 - 84) <= 2 * GRID


@pytest.mark.parametrize("bad", [5, 30, -28])
def test_grid_must_divide_the_image(bad: int) -> None:
    with pytest.raises(ValueError, match="grid"):
        WorldConfig(image_size=112, grid=bad)


def test_extension_and_distractors_keep_the_grid(grid_world: WorldConfig) -> None:
    rng = np.random.default_rng(2)
    filler = ProceduralFiller(grid_world)
    qcfg = QuestionConfig.for_world(grid_world)
    rows, graphs = [], {}
    for i in range(30):
        scene = sample_scene(rng, grid_world, f"s{i}")
        ext = extend_scene(scene, scene.render(), 1.5, rng, filler, (1, 3), world=grid_world)
        assert ext.offset[0] % GRID == 0 and ext.offset[1] % GRID == 0
        assert all(_in_one_cell(o.box) for o in ext.scene.objects)
        graphs[scene.scene_id] = ext.scene
        for r in make_questions(ext.scene, rng, qcfg):
            rows.append({**r, "split": "train", "image": scene.scene_id})
    candidates = propose_for_records(pd.DataFrame(rows), graphs, seed=0, n=2, grid=GRID)
    assert len(candidates) > 30
    assert all(_in_one_cell(b) for b in candidates["distractor_box"])
