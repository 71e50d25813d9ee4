"""Spatial relation readout: where each image token lies from a spatial question's reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aot.defender import Defender
from aot.defender.dense import RELATION_LABELS, relation_targets
from aot.defender.examples import world_examples
from aot.defender.sft import DefenderSFTConfig, DenseCollator, train_defender_sft
from aot.world import Scene, SceneObject
from aot.world.questions import answer_spec
from aot.world.scene import Background

from .test_grounding import world  # noqa: F401  (the module-scoped fixture)


def _scene() -> Scene:
    """A red circle in token (0, 0), a blue square in (0, 2), a red triangle in (3, 2)."""
    objects = (
        SceneObject(0, "circle", "red", "medium", (4, 4, 24, 24)),
        SceneObject(1, "square", "blue", "medium", (60, 4, 80, 24)),
        SceneObject(2, "triangle", "red", "medium", (60, 88, 80, 108)),
    )
    return Scene("hand", 112, 112, Background("plain", "grey", 0), objects)


def test_relation_targets_say_where_each_token_lies_from_the_reference() -> None:
    scene = _scene()
    spec = {"family": "spatial", "a": {"shape": "circle"}, "b": {"shape": "square"}}
    labels = relation_targets(scene, spec)
    names = np.array(RELATION_LABELS)[labels].reshape(4, 4)
    assert names.tolist() == [
        ["left", "left", "reference", "right"],
        ["other", "other", "below", "other"],
        ["other", "other", "below", "other"],
        ["other", "other", "below", "other"],
    ]
    # the target's token carries the answer
    assert names[0, 0] == answer_spec(scene, spec) == "left"
    below = {"family": "spatial", "a": {"shape": "triangle"}, "b": {"shape": "square"}}
    assert RELATION_LABELS[relation_targets(scene, below)[3 * 4 + 2]] == answer_spec(scene, below)
    assert relation_targets(scene, {"family": "attribute", "target": {"shape": "circle"}}) is None
    # "the red one" is ambiguous: no defined answer, so no targets
    ambiguous = {"family": "spatial", "a": {"color": "red"}, "b": {"shape": "square"}}
    assert relation_targets(scene, ambiguous) is None


def test_examples_carry_relation_targets_only_for_spatial_questions(world) -> None:  # noqa: ANN001, F811
    records, images, graphs = world
    examples = world_examples(records, images, graphs, mode="word", repeats=3)
    is_spatial = [e.grounding is not None and e.grounding.max() == 2 for e in examples]
    assert any(is_spatial)
    for example, spatial in zip(examples, is_spatial, strict=True):
        assert (example.relation is not None) == spatial
        assert example.relation is None or example.relation.shape == (16,)


def test_the_relation_readout_is_learned_and_not_saved(
    tiny_defender_dir: Path,
    world,  # noqa: F811
    tmp_path: Path,
) -> None:  # noqa: ANN001
    records, images, graphs = world
    defender = Defender.from_pretrained(tiny_defender_dir)
    keys = set(defender.model.state_dict())
    examples = world_examples(
        records, images, graphs, mode="word", repeats=4, family_weights={"spatial": 20}
    )
    spatial = [e for e in examples if e.relation is not None][:8]  # one fixed batch to fit
    config = DefenderSFTConfig(
        max_steps=80,
        batch_size=8,
        learning_rate=3e-3,
        warmup_steps=5,
        logging_steps=10,
        relation_weight=1.0,
        relation_layer=2,
    )
    trained, log = train_defender_sft(defender, spatial, config, tmp_path)
    losses = log["relation_loss"].dropna().tolist()
    # measured: 1.60 -> 0.51 over the 80 steps
    assert losses[-1] < 0.5 * losses[0]
    assert set(trained.model.state_dict()) == keys


def test_the_collator_fills_ignored_relation_targets(tiny_defender_dir: Path, world) -> None:  # noqa: ANN001, F811
    records, images, graphs = world
    defender = Defender.from_pretrained(tiny_defender_dir)
    examples = world_examples(records, images, graphs, mode="word", repeats=3)
    spatial = next(e for e in examples if e.relation is not None)
    other = next(e for e in examples if e.relation is None)
    rows = [
        {
            "images": [e.image],
            "messages": e.messages(),
            "dense": e.dense.reshape(-1).tolist(),
            "relation": [] if e.relation is None else e.relation.tolist(),
        }
        for e in (spatial, other)
    ]
    batch = DenseCollator(processor=defender.processor, assistant_only_loss=True)(rows)
    targets = batch["relation_targets"]
    assert torch.equal(targets[:16], torch.from_numpy(spatial.relation))
    assert (targets[16:] == -1).all()
    assert (batch["grounding_targets"] == -1).all()


def test_relation_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="relation_weight"):
        DefenderSFTConfig.from_dict({"relation_weight": -1.0})
    with pytest.raises(ValueError, match="relation_layer"):
        DefenderSFTConfig.from_dict({"relation_layer": 0})
