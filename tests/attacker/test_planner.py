"""The edit planner: plans never touch a target, log-probs are a normalised distribution, and the
paper's instruction text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aot.attacker.planner import (
    EditPlanner,
    PlannerConfig,
    PlanSpace,
    paper_instruction,
    plan_space,
)
from aot.bootstrap.categories import forbidden_for_spec
from aot.world import QuestionConfig, WorldConfig, make_questions, sample_scene
from aot.world.scene import boxes_separated

CROWDED = WorldConfig(min_objects=5, max_objects=8)


def _spaces(
    config: PlannerConfig, n_scenes: int = 6, seed: int = 0, world: WorldConfig = CROWDED
) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_scenes):
        scene = sample_scene(rng, world, f"scene_{i}")
        image = np.asarray(scene.render())
        for record in make_questions(scene, rng, QuestionConfig()):
            space = plan_space(image, record, scene, config)
            if space.any_valid:
                out.append((scene, record, space))
    return out


def _randomise(planner: EditPlanner, seed: int) -> None:
    """Large random weights: a peaked policy, so masking (not luck) must keep plans valid."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in planner.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 2.0)


def test_plans_never_touch_a_target() -> None:
    config = PlannerConfig()
    items = _spaces(config)
    assert {r["family"] for _, r, _ in items} == {"spatial", "attribute", "count", "existence"}
    uniform, peaked = EditPlanner(config), EditPlanner(config)
    _randomise(peaked, 0)
    spaces = [s for _, _, s in items] * 20
    plans = []
    with torch.no_grad():
        for planner in (uniform, peaked):
            actions, _, _ = planner(spaces, generator=torch.Generator().manual_seed(0))
            plans += planner.to_plans(spaces, actions)
    assert len(plans) > 2000
    kinds = set()
    for (scene, record, _), plan in zip(items * 40, plans, strict=True):
        kinds.add(plan.kind)
        zones = [
            (x0 - config.target_margin, y0 - config.target_margin, x1 + config.target_margin,
             y1 + config.target_margin)
            for x0, y0, x1, y1 in record["target_boxes"]
        ]  # fmt: skip
        assert all(boxes_separated(plan.box, z, 0) for z in zones), (record["question"], plan)
        forbidden = forbidden_for_spec(json.loads(record["spec"]))
        if plan.kind == "add":
            assert all(boxes_separated(plan.box, o.box, config.gap) for o in scene.objects)
        else:
            obj = scene.get_object(plan.object_id)
            assert list(obj.box) not in record["target_boxes"]
            assert plan.box == obj.box
        if plan.kind in ("add", "replace"):
            assert not forbidden.blocks(plan.colour, plan.shape), (record["question"], plan)
        if plan.kind == "replace":
            assert (plan.shape, plan.colour) != (obj.shape, obj.color)
    assert kinds == {"add", "remove", "replace"}


def _enumerate(space: PlanSpace) -> list[tuple[int, int, int]]:
    actions = []
    for c in np.flatnonzero(space.add_class_valid):
        actions += [(0, r, int(c)) for r in np.flatnonzero(space.region_valid)]
    actions += [(1, int(o), 42) for o in np.flatnonzero(space.remove_valid)]
    for o in range(len(space.objects)):
        actions += [(2, o, int(c)) for c in np.flatnonzero(space.replace_class_valid[o])]
    return actions


def test_log_probs_form_a_distribution_and_rescore_exactly() -> None:
    config = PlannerConfig(grid=3, region_sizes=("small",))
    space = next(s for _, _, s in _spaces(config, world=WorldConfig()) if s.kind_valid.all())
    planner = EditPlanner(config)
    _randomise(planner, 1)
    planner = planner.eval()
    actions = torch.tensor(_enumerate(space))
    with torch.no_grad():
        _, logp, _ = planner([space] * len(actions), actions=actions)
        assert abs(float(logp.exp().sum()) - 1.0) < 1e-4
        sampled, lp_sampled, _ = planner([space] * 8, generator=torch.Generator().manual_seed(3))
        _, lp_again, _ = planner([space] * 8, actions=sampled)
    torch.testing.assert_close(lp_sampled, lp_again)


def test_zero_initialised_planner_is_uniform_over_kinds() -> None:
    config = PlannerConfig()
    space = next(s for _, _, s in _spaces(config) if s.kind_valid.all())
    with torch.no_grad():
        actions, _, entropy = EditPlanner(config)([space] * 600, generator=torch.Generator())
    counts = np.bincount(actions[:, 0].numpy(), minlength=3)
    assert (counts > 150).all(), counts
    assert float(entropy[0]) > np.log(3)


def test_without_a_scene_graph_only_adds_off_targets_are_offered() -> None:
    config = PlannerConfig()
    scene, record, _ = _spaces(config)[0]
    space = plan_space(np.asarray(scene.render()), record, None, config)
    assert space.kind_valid.tolist() == [True, False, False]
    assert not space.objects


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown key.*gridd"):
        PlannerConfig.from_dict({"gridd": 4})
    with pytest.raises(ValueError, match="region_sizes"):
        PlannerConfig.from_dict({"region_sizes": ["huge"]})
    with pytest.raises(ValueError, match="edit_kinds"):
        PlannerConfig.from_dict({"edit_kinds": ["recolour"]})
    assert PlannerConfig.from_dict({"edit_kinds": ["add"]}).edit_kinds == ("add",)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    config = PlannerConfig(grid=3)
    space = _spaces(config, 1)[0][2]
    planner = EditPlanner(config)
    _randomise(planner, 2)
    planner.save(tmp_path / "planner")
    assert sorted(p.name for p in (tmp_path / "planner").iterdir()) == [
        "planner.json",
        "planner.safetensors",
    ]  # weights as safetensors, never a pickle
    loaded = EditPlanner.load(tmp_path / "planner")
    actions, lp, _ = planner([space] * 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded([space] * 4, actions=actions)[1], lp)


def test_paper_instruction() -> None:
    assert paper_instruction("How many stars are there?") == (
        "Add a plausible distractor object, inspired by the question, to mislead a model "
        "answering: How many stars are there?"
    )
