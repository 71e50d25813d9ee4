"""Flow-GRPO of the Attacker: config, advantages, on-policy ratio 1, the Defender reward with a
scripted Defender, and short runs in which the editor and the planner learn."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from aot.attacker import AttackerConfig, build_box_edit_pipeline
from aot.attacker.attack_reward import DefenderAttackReward, clean_answers
from aot.attacker.flow_grpo import (
    STEP_TIMINGS,
    FlowGRPOTrainer,
    group_advantages,
    train_attacker_flow_grpo,
)
from aot.attacker.flow_grpo_config import FlowGRPOConfig
from aot.attacker.rollout import Rollout, build_items
from aot.rewards import build_prompt
from aot.world import QuestionConfig, WorldConfig, make_questions, sample_scene

QUICK = dict(
    prompts_per_step=2, group_size=4, sampling_steps=3, quality_every=0, beta_kl=0.0, log_kl=False
)


def world_records(n_scenes: int, seed: int = 0, per_scene: int = 2) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    rows, images = [], {}
    for i in range(n_scenes):
        scene = sample_scene(rng, WorldConfig(), f"grpo_{seed}_{i}")
        images[scene.scene_id] = scene.render()
        for record in make_questions(scene, rng, QuestionConfig())[:per_scene]:
            rows.append({**record, "graph": json.dumps(scene.to_dict())})
    return pd.DataFrame(rows), images


def _right(record: dict[str, Any]) -> str:
    return (
        "\\boxed{" + (record["answer_text"] if len(record["options"]) else record["answer"]) + "}"
    )


class ScriptedDefender:
    """Answers by a rule on (edited image, its clean image, record); K identical-rule answers."""

    def __init__(
        self,
        records: pd.DataFrame,
        images: dict,
        rule: Callable[[np.ndarray, np.ndarray, dict, int], list[bool]],
    ) -> None:
        self.by_prompt = {
            build_prompt(r["question"], list(r["options"]), "word"): (
                np.asarray(images[r["image"]]),
                r,
            )
            for r in records.to_dict("records")
        }
        self.rule = rule
        self.calls = 0

    def generate(
        self, images: Sequence[Any], prompts: Sequence[str], *, n: int, **_: Any
    ) -> list[list[str]]:
        self.calls += 1
        out = []
        for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
            clean, record = self.by_prompt[prompt]
            correct = self.rule(np.asarray(image), clean, record, i)
            assert len(correct) == n
            out.append([_right(record) if ok else "\\boxed{nothing}" for ok in correct])
        return out


TINY = AttackerConfig(
    crop_size=16, block_out_channels=(8, 16), attention_head_dim=8, norm_num_groups=4
)


@pytest.fixture(scope="module")
def records() -> tuple[pd.DataFrame, dict]:
    return world_records(8)


def test_config_rejects_unknown_keys_and_bad_values_by_name() -> None:
    with pytest.raises(ValueError, match="unknown key.*group_sise"):
        FlowGRPOConfig.from_dict({"group_sise": 8})
    with pytest.raises(ValueError, match="AttackRewardConfig.*unknown key.*kk"):
        FlowGRPOConfig.from_dict({"reward": {"kk": 3}})
    with pytest.raises(ValueError, match="PlannerConfig.*unknown key.*grids"):
        FlowGRPOConfig.from_dict({"planner": {"grids": 3}})
    for key, value in [
        ("group_size", 1),
        ("noise_level", 0.0),
        ("train_step_fraction", 1.5),
        ("clip_range", -1.0),
        ("adv_std", "batch"),
        ("train_unet", 1),
        ("steps", True),
    ]:
        with pytest.raises(ValueError, match=key):
            FlowGRPOConfig.from_dict({key: value})
    cfg = FlowGRPOConfig.from_dict({"reward": {"k": 5}, "planner": {"edit_kinds": ["add"]}})
    assert cfg.reward.k == 5 and cfg.planner.edit_kinds == ("add",)


def test_group_advantages() -> None:
    rewards = np.array([0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    groups = np.repeat([0, 1], 4)
    adv = group_advantages(rewards, groups)
    np.testing.assert_allclose(adv[:4], [-1, 1, -1, 1], atol=1e-3)
    assert (adv[4:] == 0).all()  # no signal in a uniform group
    assert np.abs(group_advantages(np.array([0, 0, 0, 100.0]), np.zeros(4), "none", 5.0)).max() == 5


def test_first_update_is_on_policy(records: tuple[pd.DataFrame, dict]) -> None:
    """With one minibatch the update recomputes exactly the sampling policy: ratio 1."""
    recs, images = records
    cfg = FlowGRPOConfig.from_dict({**QUICK, "minibatches": 1, "beta_kl": 0.1})
    items = build_items(recs, images, cfg.planner)
    rewards = lambda r: {"reward": np.random.default_rng(0).random(len(r))}  # noqa: E731
    trainer = FlowGRPOTrainer(build_box_edit_pipeline(TINY, 0), items, cfg, rewards, seed=0)
    rollout = trainer.rollout(items[:2], 4, torch.Generator().manual_seed(0))
    stats = trainer.update(rollout, group_advantages(rewards(rollout)["reward"], rollout.groups))
    assert stats["ratio_dev_max"] < 1e-4
    assert stats["plan_ratio_dev_max"] < 1e-5
    assert stats["clip_frac"] == 0.0
    assert stats["kl_loss"] < 1e-8  # policy == reference before the first step
    rollout2 = trainer.rollout(items[:2], 4, torch.Generator().manual_seed(0))
    assert trainer.sampling_kl(rollout2) > 0  # ... and it moved after it


def test_defender_reward_scores_a_scripted_defender(records: tuple[pd.DataFrame, dict]) -> None:
    """Queried edits get answers (wrong, wrong, wrong), (wrong, right, wrong), (right x3) in
    turn: strict efficacy 1, 0, 0; graded 1, 2/3, 0; an item the Defender gets wrong on the
    clean image scores 0 and is not asked about."""
    recs, images = records
    pattern = [[False] * 3, [False, True, False], [True] * 3]
    defender = ScriptedDefender(recs, images, lambda e, c, r, i: pattern[i % 3])
    cfg = FlowGRPOConfig.from_dict({**QUICK, "reward": {"validity_mode": "off"}})
    items = build_items(recs, images, cfg.planner)
    trainer = FlowGRPOTrainer(build_box_edit_pipeline(TINY, 0), items, cfg, lambda r: {}, seed=0)
    rollout: Rollout = trainer.rollout(items[:3], 4, torch.Generator().manual_seed(0))
    for it in items[:2]:
        it.clean_answers = [_right(it.row)] * 3
    items[2].clean_answers = ["\\boxed{nothing}", _right(items[2].row), _right(items[2].row)]
    for graded, expected in ((False, [1.0, 0.0, 0.0]), (True, [1.0, 2 / 3, 0.0])):
        rcfg = cfg.reward.__class__.from_dict({**cfg.reward.to_dict(), "graded": graded})
        scores = DefenderAttackReward(defender, rcfg)(rollout)
        queried = np.flatnonzero(scores["queried"])
        ok = (scores["gate"] > 0) & (scores["gt_ok"] > 0)
        assert set(queried) == set(np.flatnonzero(ok[:8]))  # items 0-1 only (samples 0-7)
        want = [expected[j % 3] for j in range(len(queried))]
        np.testing.assert_allclose(scores["efficacy"][queried], want)
        np.testing.assert_allclose(scores["reward"][queried], want)
        assert (scores["efficacy"][8:] == 0).all() and (scores["clean_ok"][8:] == 0).all()


class SureDefender(ScriptedDefender):
    """A ScriptedDefender that also scores completions: the right answer at 0.9, 0.5, 0.1 in turn,
    recording what it was asked to score."""

    def __init__(self, records: pd.DataFrame, images: dict) -> None:
        super().__init__(records, images, lambda e, c, r, i: [True] * 3)
        self.scored: list[str] = []

    def completion_probability(
        self, images: Sequence[Any], prompts: Sequence[str], completions: Sequence[str], **kw: Any
    ) -> list[float]:
        start = len(self.scored)
        self.scored += list(completions)
        return [(0.9, 0.5, 0.1)[(start + i) % 3] for i in range(len(completions))]


def test_confidence_efficacy_is_dense(records: tuple[pd.DataFrame, dict]) -> None:
    """`confidence: true`: efficacy = 1 - the Defender's probability of the right answer, so
    edits it answers right every time still get a graded reward (1 - 0.9, 1 - 0.5, 1 - 0.1);
    unqueried edits stay at 0, and a Defender that cannot score completions is named."""
    recs, images = records
    cfg = FlowGRPOConfig.from_dict(
        {**QUICK, "reward": {"validity_mode": "off", "graded": True, "confidence": True}}
    )
    items = build_items(recs, images, cfg.planner)
    trainer = FlowGRPOTrainer(build_box_edit_pipeline(TINY, 0), items, cfg, lambda r: {}, seed=0)
    rollout: Rollout = trainer.rollout(items[:3], 4, torch.Generator().manual_seed(0))
    for it in items[:3]:
        it.clean_answers = [_right(it.row)] * 3
    defender = SureDefender(recs, images)
    scores = DefenderAttackReward(defender, cfg.reward)(rollout)
    queried = np.flatnonzero(scores["queried"])
    assert len(queried) > 0 and (scores["edited_wrong_rate"][queried] == 0).all()
    want = [(0.1, 0.5, 0.9)[j % 3] for j in range(len(queried))]
    np.testing.assert_allclose(scores["efficacy"][queried], want)
    np.testing.assert_allclose(scores["correct_probability"][queried], [1 - w for w in want])
    assert defender.scored == [_right(rollout.items[i].row) for i in queried]
    assert (scores["efficacy"][np.flatnonzero(scores["queried"] == 0)] == 0).all()
    with pytest.raises(ValueError, match="completion_probability"):
        DefenderAttackReward(ScriptedDefender(recs, images, lambda *a: [True] * 3), cfg.reward)(
            rollout
        )


class JudgingDefender(ScriptedDefender):
    """A ScriptedDefender that also answers the validity judge's yes/no questions: Yes to every
    other one, in call order; it records what the judge showed and asked."""

    def __init__(self, records: pd.DataFrame, images: dict) -> None:
        super().__init__(records, images, lambda e, c, r, i: [False] * 3)
        self.judged: list[tuple[tuple[int, int], str]] = []

    def generate(
        self, images: Sequence[Any], prompts: Sequence[str], *, n: int, **kw: Any
    ) -> list[list[str]]:
        if prompts and prompts[0] not in self.by_prompt:  # the judge's questions
            assert n == 1 and kw.get("temperature", 0.0) == 0.0  # one greedy answer per edit
            start = len(self.judged)
            self.judged += [(im.size, p) for im, p in zip(images, prompts, strict=True)]
            return [
                ["\\boxed{Yes}" if (start + i) % 2 == 0 else "\\boxed{No}"]
                for i in range(len(prompts))
            ]
        return super().generate(images, prompts, n=n, **kw)


def test_the_defender_judges_validity_when_asked(records: tuple[pd.DataFrame, dict]) -> None:
    """`validity_judge: defender` (the `paper` setting): one greedy yes/no question per edit on a
    crop of its box, naming the planned object (add / replace: Yes is valid) or the removed one
    (remove: No is valid); the verdict replaces the world's pixel tests (kept as `world_valid`)
    and, with `validity_mode: gate`, an invalid edit is never put to the Defender's K answers."""
    recs, images = records
    cfg = FlowGRPOConfig.from_dict(
        {**QUICK, "reward": {"validity_judge": "defender", "require_clean_correct": False}}
    )
    items = build_items(recs, images, cfg.planner)
    trainer = FlowGRPOTrainer(build_box_edit_pipeline(TINY, 0), items, cfg, lambda r: {}, seed=0)
    rollout = trainer.rollout(items[:4], 4, torch.Generator().manual_seed(0))
    defender = JudgingDefender(recs, images)
    scores = DefenderAttackReward(defender, cfg.reward)(rollout)
    assert len(defender.judged) == len(rollout.plans)
    said_yes = np.arange(len(rollout.plans)) % 2 == 0
    kinds = set()
    for item, plan, (size, prompt), yes, valid in zip(
        rollout.items, rollout.plans, defender.judged, said_yes, scores["valid"], strict=True
    ):
        kinds.add(plan.kind)
        named = plan if plan.kind != "remove" else item.scene.get_object(plan.object_id)
        colour, shape = named.colour if plan.kind != "remove" else named.color, named.shape
        assert f"Is there a{'n' if colour[0] in 'aeiou' else ''} {colour} {shape} in" in prompt
        assert min(size) >= cfg.reward.judge_min_side  # the crop was enlarged for the judge
        assert valid == float(yes if plan.kind != "remove" else not yes)
    assert "remove" in kinds and kinds & {"add", "replace"}
    assert "world_valid" in scores and (scores["judge_parsed"] == 1).all()
    asked = (scores["gate"] > 0) & (scores["gt_ok"] > 0) & (scores["valid"] > 0)
    np.testing.assert_array_equal(scores["queried"] > 0, asked)
    assert 0 < asked.sum() < len(asked)


def _redness(rollout: Rollout) -> dict[str, np.ndarray]:
    out = []
    for plan, edited in zip(rollout.plans, rollout.edited, strict=True):
        x0, y0, x1, y1 = plan.box
        box = edited[y0:y1, x0:x1].astype(float) / 255
        out.append(float((box[..., 0] - (box[..., 1] + box[..., 2]) / 2).mean()))
    return {"reward": np.array(out)}


# Measured (tiny UNet, 6 steps, lr 3e-3, clip 1e-2, seeds 0/1/2): fixed-noise redness rose by
# 0.41 / 0.27 / 0.24; with the rewards shuffled within the batch (a control that keeps the
# update's noise but not its signal) it moved -0.23 / +0.07 / -0.03.
REDNESS_GAIN = 0.15


def test_editor_learns_a_scripted_reward(records: tuple[pd.DataFrame, dict]) -> None:
    recs, images = records
    cfg = FlowGRPOConfig.from_dict(
        {
            **QUICK,
            "steps": 6,
            "group_size": 8,
            "sampling_steps": 4,
            "lr": 3e-3,
            "clip_range": 1e-2,
            "train_planner": False,
            "planner": {"edit_kinds": ["add"]},
        }
    )
    items = build_items(recs, images, cfg.planner)
    trainer = FlowGRPOTrainer(build_box_edit_pipeline(TINY, 0), items, cfg, _redness, seed=0)

    def fixed() -> float:
        rollout = trainer.rollout(items[:8], 4, torch.Generator().manual_seed(123))
        return float(_redness(rollout)["reward"].mean())

    before = fixed()
    for _ in range(cfg.steps):
        row = trainer.step()
    after = fixed()
    assert after - before > REDNESS_GAIN, (before, after)
    assert row["frac_add"] == 1.0


def _corner_rule(edited: np.ndarray, clean: np.ndarray, record: dict, i: int) -> list[bool]:
    """Fooled (all 3 answers wrong) by >= 20 visibly changed pixels in the top-left quadrant."""
    h, w = clean.shape[:2]
    changed = (np.abs(edited.astype(int) - clean)[: h // 2, : w // 2] > 40).any(-1).sum()
    return [changed < 20] * 3


# Measured (planner only, lr 3e-2, 8 steps, seeds 0/1/2): fixed-sample mean reward 0.50 ->
# 0.62 / 0.67 / 0.62; with within-batch shuffled rewards 0.50 -> 0.39 / 0.37 / 0.40.
CORNER_GAIN = 0.05


def test_planner_learns_where_the_defender_fails(records: tuple[pd.DataFrame, dict]) -> None:
    """The full default reward (gate, guard, clean-correct, efficacy) with a stub Defender that
    fails on edits in the top-left quadrant: the planner moves its edits there."""
    recs, images = records
    cfg = FlowGRPOConfig.from_dict(
        {
            **QUICK,
            "steps": 8,
            "prompts_per_step": 4,
            "group_size": 8,
            "planner_lr": 3e-2,
            "train_unet": False,
            "reward": {"validity_mode": "off"},
        }
    )
    defender = ScriptedDefender(recs, images, _corner_rule)
    items = build_items(recs, images, cfg.planner)
    clean_answers(defender, items, cfg.reward, 32, 0)
    reward = DefenderAttackReward(defender, cfg.reward)
    trainer = FlowGRPOTrainer(build_box_edit_pipeline(TINY, 0), items, cfg, reward, seed=0)

    def fixed() -> float:
        rollout = trainer.rollout(items, 8, torch.Generator().manual_seed(123))
        return float(reward(rollout)["reward"].mean())

    before = fixed()
    for _ in range(cfg.steps):
        trainer.step()
    after = fixed()
    assert after - before > CORNER_GAIN, (before, after)


def test_node_entry_point_logs_every_part(records: tuple[pd.DataFrame, dict]) -> None:
    recs, images = records
    scenes = pd.DataFrame({"scene_id": recs["scene_id"], "graph": recs["graph"]}).drop_duplicates(
        "scene_id"
    )
    defender = ScriptedDefender(recs, images, lambda e, c, r, i: [i % 2 == 0] * 3)
    params = {**QUICK, "steps": 2, "quality_every": 2, "quality_edits": 4, "log_kl": True}
    pipe, log = train_attacker_flow_grpo(
        build_box_edit_pipeline(TINY, 0),
        defender,
        recs.drop(columns="graph"),
        images,
        params,
        seed=0,
        scenes=scenes,
    )
    assert list(log["step"]) == [0, 1, 2]
    for column in (
        "reward_mean", "reward_std", "gate_pass", "gt_ok", "efficacy", "validity", "kl",
        "clip_frac", "frac_add", "frac_remove", "frac_replace", "quality_colour_acc",
        "quality_shape_acc",
    ):  # fmt: skip
        assert column in log, column
    # step timings reach the console, not the saved log: a rerun writes the same bytes
    assert not set(STEP_TIMINGS) & set(log.columns)
    assert log["quality_shape_acc"].notna().tolist() == [True, False, True]
    assert log["reward_mean"].iloc[1:].notna().all()
    assert pipe.planner is not None
    with pytest.raises(ValueError, match="defender or a reward_fn"):
        train_attacker_flow_grpo(pipe, None, recs, images, params, seed=0)


def test_a_resumed_run_continues_like_an_uninterrupted_one(
    records: tuple[pd.DataFrame, dict], tmp_path
) -> None:  # noqa: ANN001
    """Killed after step 2 (its checkpoint written), rerun to step 4: same log, same weights."""
    recs, images = records
    scenes = pd.DataFrame({"scene_id": recs["scene_id"], "graph": recs["graph"]}).drop_duplicates(
        "scene_id"
    )
    base = {**QUICK, "steps": 4, "save_every": 2, "beta_kl": 0.05, "log_kl": True}

    calls: list[int] = []

    def run(steps: int, folder) -> tuple:  # noqa: ANN001
        defender = ScriptedDefender(recs, images, lambda e, c, r, i: [i % 3 == 0] * 3)
        calls.clear()
        return train_attacker_flow_grpo(
            build_box_edit_pipeline(TINY, 0),
            defender,
            recs.drop(columns="graph"),
            images,
            {**base, "steps": steps},
            seed=0,
            scenes=scenes,
            checkpoint_dir=folder,
            on_step=lambda row, trainer: calls.append(int(row["step"])),
        )

    straight, log = run(4, tmp_path / "straight")
    run(2, tmp_path / "resumed")  # the "interrupted" run: its last checkpoint is step 2
    resumed, log2 = run(4, tmp_path / "resumed")
    assert calls == [3, 4]  # steps 1-2 came from the checkpoint, not from a rerun
    assert list(log2["step"]) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(
        log[["step", "reward_mean", "efficacy", "kl"]],
        log2[["step", "reward_mean", "efficacy", "kl"]],
    )
    pairs = zip(
        straight.unet.state_dict().values(), resumed.unet.state_dict().values(), strict=True
    )
    for a, b in pairs:
        assert torch.equal(a, b)
