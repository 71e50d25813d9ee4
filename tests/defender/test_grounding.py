"""Question grounding: which image tokens a question is about, and the loss that teaches it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aot.defender import Defender
from aot.defender.dense import question_targets
from aot.defender.examples import world_examples
from aot.defender.sft import DefenderSFTConfig, DenseCollator, train_defender_sft
from aot.world import Scene, SceneObject
from aot.world.scene import Background


def _scene() -> Scene:
    """A red circle in token (0, 0), a blue square in (0, 2), a red square in (3, 1)."""
    objects = (
        SceneObject(0, "circle", "red", "medium", (4, 4, 24, 24)),
        SceneObject(1, "square", "blue", "medium", (60, 4, 80, 24)),
        SceneObject(2, "square", "red", "medium", (32, 88, 52, 108)),
    )
    return Scene("hand", 112, 112, Background("plain", "grey", 0), objects)


def test_question_targets_mark_the_tokens_a_question_is_about() -> None:
    scene = _scene()
    spatial = question_targets(
        scene, {"family": "spatial", "a": {"shape": "circle"}, "b": {"color": "blue"}}
    )
    assert spatial.shape == (16,)
    assert spatial[0] == 1 and spatial[2] == 2 and spatial.sum() == 3
    count = question_targets(scene, {"family": "count", "filter": {"color": "red"}})
    assert np.flatnonzero(count).tolist() == [0, 13] and set(count[[0, 13]]) == {1}
    attribute = question_targets(scene, {"family": "attribute", "target": {"shape": "circle"}})
    assert np.flatnonzero(attribute).tolist() == [0]
    absent = question_targets(scene, {"family": "existence", "color": "blue", "shape": "circle"})
    assert not absent.any()
    # "the square" is ambiguous here: no defined answer, so no targets
    assert question_targets(scene, {"family": "attribute", "target": {"shape": "square"}}) is None
    assert (
        question_targets(scene, json.dumps({"family": "count", "filter": {"shape": "cross"}})).sum()
        == 0
    )


def test_examples_carry_the_first_questions_targets(world) -> None:  # noqa: ANN001
    records, images, graphs = world
    examples = world_examples(records, images, graphs, mode="word", repeats=2)
    assert all(e.grounding is not None and e.grounding.shape == (16,) for e in examples)
    assert any(e.grounding.any() for e in examples)
    # no scene graphs (user data): no targets
    assert all(e.grounding is None for e in world_examples(records.head(4), images, None))


def test_the_collator_fills_ignored_targets_for_examples_without_them(
    tiny_defender_dir: Path, world
) -> None:  # noqa: ANN001
    defender = Defender.from_pretrained(tiny_defender_dir)
    records, images, graphs = world
    with_targets = world_examples(records.head(4), images, graphs, mode="word")[0]
    rows = [
        {
            "images": [with_targets.image],
            "messages": with_targets.messages(),
            "dense": with_targets.dense.reshape(-1).tolist(),
            "grounding": with_targets.grounding.tolist(),
        },
        {
            "images": [with_targets.image],
            "messages": with_targets.messages(),
            "dense": with_targets.dense.reshape(-1).tolist(),
        },
    ]
    collator = DenseCollator(processor=defender.processor, assistant_only_loss=True)
    batch = collator([dict(r) for r in rows])
    targets = batch["grounding_targets"]
    assert targets.shape == (32,)
    assert torch.equal(targets[:16], torch.from_numpy(with_targets.grounding))
    assert (targets[16:] == -1).all()
    rows[0]["grounding"] = [0] * 15
    with pytest.raises(ValueError, match="15 image tokens"):
        collator([dict(r) for r in rows])


def test_grounding_is_learned_and_the_head_is_not_saved(
    tiny_defender_dir: Path, world, tmp_path: Path
) -> None:  # noqa: ANN001
    records, images, graphs = world
    defender = Defender.from_pretrained(tiny_defender_dir)
    keys = set(defender.model.state_dict())
    examples = world_examples(records, images, graphs, mode="word", repeats=2)
    config = DefenderSFTConfig(
        max_steps=30,
        batch_size=8,
        learning_rate=2e-3,
        warmup_steps=5,
        logging_steps=10,
        grounding_weight=1.0,
        grounding_layer=1,
    )
    trained, log = train_defender_sft(defender, examples, config, tmp_path)
    losses = log["grounding_loss"].dropna().tolist()
    # measured: 0.87 -> 0.48 over the 30 steps
    assert losses[-1] < 0.7 * losses[0]
    assert set(trained.model.state_dict()) == keys
    trained.save_pretrained(tmp_path / "saved")
    assert Defender.from_pretrained(tmp_path / "saved").num_parameters() == trained.num_parameters()


def test_grounding_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="grounding_weight"):
        DefenderSFTConfig.from_dict({"grounding_weight": -1.0})
    with pytest.raises(ValueError, match="grounding_layer"):
        DefenderSFTConfig.from_dict({"grounding_layer": 0})


def test_the_grounding_loss_reaches_the_vision_tower_through_the_lm(
    tiny_defender_dir: Path, world, tmp_path: Path
) -> None:  # noqa: ANN001
    from datasets import Dataset
    from trl import SFTConfig

    from aot.defender.sft import DenseSFTTrainer

    records, images, graphs = world
    defender = Defender.from_pretrained(tiny_defender_dir)
    examples = world_examples(records.head(8), images, graphs, mode="word")
    rows = [
        {
            "images": [e.image],
            "messages": e.messages(),
            "dense": e.dense.reshape(-1).tolist(),
            "grounding": e.grounding.tolist(),
        }
        for e in examples
    ]
    collator = DenseCollator(processor=defender.processor, assistant_only_loss=True)
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        report_to="none",
        use_cpu=True,
        assistant_only_loss=True,
        remove_unused_columns=False,
        max_length=None,
    )
    common = {
        "model": defender.model,
        "args": args,
        "train_dataset": Dataset.from_list(rows),
        "processing_class": defender.processor,
        "data_collator": collator,
    }
    with pytest.raises(ValueError, match="past the Defender's"):
        DenseSFTTrainer(**common, grounding_weight=1.0, grounding_layer=99)
    trainer = DenseSFTTrainer(**common, dense_weight=0.0, grounding_weight=1.0, grounding_layer=1)
    trainer.create_optimizer()
    head = set(map(id, trainer.grounding_head.parameters()))
    assert head <= {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    visual = defender.model.model.visual
    grads = []
    for weight in (0.0, 1.0):
        trainer.grounding_weight = weight
        defender.model.zero_grad()
        trainer.compute_loss(defender.model, collator([dict(r) for r in rows])).backward()
        grads.append(torch.cat([p.grad.flatten() for p in visual.parameters()]))
    assert not torch.allclose(grads[0], grads[1])


def test_family_weights_shift_which_family_a_conversation_asks(world) -> None:  # noqa: ANN001
    records, images, graphs = world
    spatial_images = records[records["family"] == "spatial"]["image"].unique()
    records = records[records["image"].isin(spatial_images)]

    def spatial_share(weights: dict[str, float] | None) -> float:
        examples = world_examples(
            records, images, graphs, mode="word", repeats=40, seed=3, family_weights=weights
        )
        asked = [e.grounding.max() == 2 for e in examples]  # only spatial marks a reference
        return float(np.mean(asked))

    # nearly every image here has all four families: uniform gives about 1/4, x3 about 1/2
    assert 0.18 < spatial_share(None) < 0.32
    assert 0.42 < spatial_share({"spatial": 3.0}) < 0.58
    assert spatial_share({"spatial": 1000.0}) > 0.97


@pytest.mark.parametrize("weights", [{"colour": 1.0}, {"spatial": 0}, {"spatial": "high"}])
def test_bad_family_weights_are_named(world, weights: dict) -> None:  # noqa: ANN001
    records, images, graphs = world
    with pytest.raises(ValueError, match="family_weights"):
        world_examples(records.head(4), images, graphs, family_weights=weights)
