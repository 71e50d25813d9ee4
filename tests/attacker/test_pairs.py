"""Edit pairs: procedural targets are the world's exact edits; given quadruples crop the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aot.attacker import (
    REMOVE_CLASS,
    EditPairs,
    class_prompt,
    iter_edit_examples,
    make_edit_pairs,
    pairs_from_records,
)
from aot.attacker.pairs import examples_to_pairs, paint_added
from aot.world import Edit, Scene, WorldConfig, apply_edit, find_free_box


def test_make_edit_pairs_shapes_and_determinism() -> None:
    a = make_edit_pairs(np.random.default_rng(0), WorldConfig(), 300, remove_fraction=0.3)
    b = make_edit_pairs(np.random.default_rng(0), WorldConfig(), 300, remove_fraction=0.3)
    assert len(a) == 300
    assert a.src.shape == a.target.shape == (300, 3, 32, 32) and a.src.dtype == torch.uint8
    assert a.mask.shape == (300, 1, 32, 32)
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("src", "target", "mask"))
    removes = (a.class_ids == REMOVE_CLASS).float().mean().item()
    assert 0.2 < removes < 0.4
    assert a.class_ids.max() <= REMOVE_CLASS


def test_pairs_change_the_box() -> None:
    pairs = make_edit_pairs(np.random.default_rng(1), WorldConfig(), 100)
    diff = (pairs.src.int() - pairs.target.int()).abs().amax(dim=1, keepdim=True)
    inside = (diff * pairs.mask).flatten(1).amax(dim=1)
    assert (inside > 40).float().mean() > 0.95  # every edit visibly changes its box
    x0, src, mask, cls = pairs.batch(torch.arange(4))
    assert x0.dtype == torch.float32 and -1 <= x0.min() and x0.max() <= 1


def test_paint_added_equals_rerendered_scene(scene: Scene) -> None:
    rng = np.random.default_rng(0)
    source = np.asarray(scene.render())
    for shape, colour in [("star", "red"), ("hexagon", "blue"), ("cross", "yellow")]:
        box = find_free_box(scene, 22, rng)
        assert box is not None
        edited = apply_edit(scene, Edit("add", box, shape, colour)).render()
        assert np.array_equal(paint_added(source, box, shape, colour), np.asarray(edited))


def test_pairs_from_records_match_procedural_crops() -> None:
    examples = list(iter_edit_examples(np.random.default_rng(2), WorldConfig(), 12, 0.25))
    expected = examples_to_pairs(examples)
    got = pairs_from_records(
        [Image.fromarray(e.source) for e in examples],
        [Image.fromarray(e.target) for e in examples],
        [e.box for e in examples],
        [class_prompt(e.class_id) for e in examples],
    )
    for key in ("src", "target", "mask", "class_ids"):
        assert torch.equal(getattr(got, key), getattr(expected, key)), key


def test_pairs_from_records_errors() -> None:
    img = Image.new("RGB", (112, 112))
    with pytest.raises(ValueError, match="lengths"):
        pairs_from_records([img], [img, img], [(0, 0, 10, 10)], ["red star"])
    with pytest.raises(ValueError, match="pink"):
        pairs_from_records([img], [img], [(0, 0, 10, 10)], ["pink star"])
    with pytest.raises(ValueError, match="sizes differ"):
        pairs_from_records([img], [Image.new("RGB", (56, 56))], [(0, 0, 10, 10)], ["red star"])
    with pytest.raises(ValueError, match="positive"):
        make_edit_pairs(np.random.default_rng(0), WorldConfig(), 0)


def test_concat() -> None:
    a = make_edit_pairs(np.random.default_rng(0), WorldConfig(), 5)
    both = EditPairs.concat([a, a])
    assert len(both) == 10 and torch.equal(both.src[5:], a.src)
