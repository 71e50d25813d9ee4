"""Edit-quality metrics score the world's own filler as perfect and a no-op as failing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from aot.attacker import (
    BoxEditPipeline,
    box_mse,
    class_to_edit,
    colour_match,
    edit_quality,
    iter_edit_examples,
    shape_match,
)
from aot.world import SHAPES, WorldConfig, paint_object


def test_ground_truth_edits_score_perfectly() -> None:
    examples = list(iter_edit_examples(np.random.default_rng(5), WorldConfig(), 60, 0.0))
    for ex in examples:
        _, shape, colour = class_to_edit(ex.class_id)
        assert colour_match(ex.target, ex.source, ex.box, colour)
        assert shape_match(ex.target, ex.source, ex.box, shape)
        assert box_mse(ex.target, ex.target, ex.box) == 0.0
        assert box_mse(ex.source, ex.target, ex.box) > 0.0
        assert not colour_match(ex.source, ex.source, ex.box, colour)  # nothing painted
        assert not shape_match(ex.source, ex.source, ex.box, shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_match_tells_shapes_apart(shape: str) -> None:
    clean = Image.new("RGB", (112, 112), (150, 150, 150))
    box = (30, 30, 52, 52)
    painted = paint_object(clean, box, shape, "blue")
    assert [s for s in SHAPES if shape_match(painted, clean, box, s)] == [shape]
    assert colour_match(painted, clean, box, "blue") and not colour_match(
        painted, clean, box, "red"
    )


def test_edit_quality_report(tiny_pipe: BoxEditPipeline) -> None:
    q = edit_quality(tiny_pipe, n=12, seed=1, steps=2)
    assert set(q) >= {"mse_box", "mse_no_edit", "colour_acc", "shape_acc", "remove_mse"}
    assert q["n_add"] + q["n_remove"] == 12
    assert q["mse_ceiling"] < q["mse_no_edit"]
    assert all(math.isfinite(v) for k, v in q.items() if k != "remove_mse" or q["n_remove"])
