"""Flow-GRPO's default reward: integrity gate x ground-truth guard x validity x Defender efficacy.

The parts are the pure functions of ``aot.rewards.attack``; this module asks the frozen Defender
(``defender_answers``), only for the edits that can still score, and puts the parts together
per edit of a ``Rollout`` (``DefenderAttackReward``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from aot.attacker.planner import EditPlan
from aot.attacker.rollout import AttackItem, Rollout
from aot.bootstrap.pairs import Answerer  # the Defender interface the filter uses too
from aot.rewards.answer import build_prompt, target_completion
from aot.rewards.attack import (
    AttackRewardConfig,
    composite_reward,
    correct_rate,
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
from aot.world import Edit, apply_edit


def defender_answers(
    defender: Answerer,
    images: Sequence[np.ndarray],
    rows: Sequence[Mapping[str, Any]],
    config: AttackRewardConfig,
    batch_size: int,
    seed: int | None,
) -> list[list[str]]:
    """The Defender's K answers per (image, record) at the reward's temperature."""
    if not rows:
        return []
    prompts = [build_prompt(r["question"], list(r["options"]), config.answer_mode) for r in rows]
    pil = [Image.fromarray(np.asarray(im, dtype=np.uint8), "RGB") for im in images]
    return defender.generate(
        pil,
        prompts,
        n=config.k,
        temperature=config.temperature,
        max_new_tokens=config.max_new_tokens,
        batch_size=batch_size,
        seed=seed,
    )


class DefenderAttackReward:
    """The default reward: integrity gate x ground-truth guard x validity x Defender efficacy
    (``aot.rewards.attack``). The Defender is queried only for edits that pass the gate, the
    guard and the clean-correct condition (the others score 0 whatever it answers)."""

    def __init__(
        self, defender: Answerer, config: AttackRewardConfig, batch_size: int = 32
    ) -> None:
        self.defender = defender
        self.config = config
        self.batch_size = batch_size
        self.seed = 0
        self._background: dict[tuple[str, int], np.ndarray] = {}

    def background(self, item: AttackItem, object_id: int) -> np.ndarray | None:
        """The clean image with one object removed (what lies behind it), from the graph."""
        if item.scene is None:
            return None
        key = (item.scene.scene_id + "|" + item.prompt_key, object_id)
        if key not in self._background:
            obj = item.scene.get_object(object_id)
            self._background[key] = np.asarray(
                apply_edit(item.scene, Edit("remove", obj.box)).render()
            )
        return self._background[key]

    def parts(self, item: AttackItem, plan: EditPlan, edited: np.ndarray) -> dict[str, float]:
        """Every reward part except efficacy for one edit."""
        cfg = self.config
        targets = item.space.target_boxes
        out: dict[str, float] = {}
        out.update(integrity_gate(item.image, edited, targets, cfg.ssim_threshold, cfg.ssim_margin))
        guard = ground_truth_guard(
            plan.kind,
            plan.box,
            targets,
            shape=plan.shape,
            colour=plan.colour,
            spec=item.row.get("spec"),
            scene=item.scene if cfg.exact_guard else None,
            margin=cfg.target_margin,
        )
        out.update({k: v for k, v in guard.items() if k != "gt_reason"})
        reference = item.image if plan.kind == "add" else self.background(item, int(plan.object_id))
        if reference is None:
            out.update({"valid": 1.0, "colour_ok": math.nan, "shape_ok": math.nan})
        else:
            out.update(
                edit_validity(
                    edited,
                    reference,
                    plan.box,
                    plan.kind,
                    plan.shape,
                    plan.colour,
                    checks=cfg.validity_checks,
                    remove_tol=cfg.remove_tol,
                )
            )
        out.update(outside_similarity(item.image, edited, [plan.box]))
        out.update(imperceptibility(item.image, edited, plan.box))
        return out

    def judge(self, rollout: Rollout) -> list[dict[str, float]]:
        """The Defender as the validity judge (``validity_judge: defender``, the ``paper``
        setting): one greedy yes/no answer per edit on a crop of its box: is the planned object
        there (add / replace), is the removed one gone (remove)."""
        cfg = self.config
        crops, prompts, expected = [], [], []
        for item, plan, edited in zip(rollout.items, rollout.plans, rollout.edited, strict=True):
            shape, colour = plan.shape, plan.colour
            if plan.kind == "remove":
                if item.scene is None or plan.object_id is None:
                    raise ValueError("the validity judge needs the scene graph of a remove edit")
                obj = item.scene.get_object(int(plan.object_id))
                shape, colour = obj.shape, obj.color
            if shape is None or colour is None:
                raise ValueError(f"the validity judge needs the shape and colour of a {plan.kind}")
            question, answer = judge_question(plan.kind, shape, colour)
            crops.append(judge_crop(edited, plan.box, cfg.judge_context, cfg.judge_min_side))
            prompts.append(build_prompt(question, [], cfg.answer_mode))
            expected.append(answer)
        answers = self.defender.generate(
            crops, prompts, n=1, max_new_tokens=cfg.max_new_tokens, batch_size=self.batch_size
        )
        return [
            judged_validity(a[0], e, cfg.answer_mode)
            for a, e in zip(answers, expected, strict=True)
        ]

    def correct_probability(self, rollout: Rollout, ask: Sequence[int]) -> list[float]:
        """The Defender's probability of the right answer on each asked edit (``confidence``)."""
        if not ask:
            return []
        mode = self.config.answer_mode
        score = getattr(self.defender, "completion_probability", None)
        if score is None:
            raise ValueError(
                "reward.confidence needs a Defender with completion_probability "
                f"({type(self.defender).__name__} has none)"
            )
        rows = [rollout.items[i].row for i in ask]
        return score(
            [Image.fromarray(np.asarray(rollout.edited[i], dtype=np.uint8), "RGB") for i in ask],
            [build_prompt(r["question"], list(r["options"]), mode) for r in rows],
            [
                target_completion(r["answer"], r.get("answer_text"), list(r["options"]), mode)
                for r in rows
            ],
            batch_size=self.batch_size,
        )

    def __call__(self, rollout: Rollout) -> dict[str, np.ndarray]:
        cfg = self.config
        rows: list[dict[str, float]] = []
        for item, plan, edited in zip(rollout.items, rollout.plans, rollout.edited, strict=True):
            rows.append(self.parts(item, plan, edited))
        if cfg.validity_judge == "defender":
            for r, judged in zip(rows, self.judge(rollout), strict=True):
                r["world_valid"] = r["valid"]
                r.update(judged)
        clean_ok = []
        for item in rollout.items:
            if not cfg.require_clean_correct:
                clean_ok.append(True)
            elif item.clean_answers is None:
                raise ValueError("require_clean_correct needs the clean answers of every item")
            else:
                clean_ok.append(
                    correct_rate(item.clean_answers, item.row, cfg.answer_mode) >= cfg.clean_min
                )
        ask = [
            i
            for i, r in enumerate(rows)
            if r["gate"] > 0
            and r["gt_ok"] > 0
            and clean_ok[i]
            and (cfg.validity_mode != "gate" or r["valid"] > 0)
        ]
        answers = defender_answers(
            self.defender,
            [rollout.edited[i] for i in ask],
            [rollout.items[i].row for i in ask],
            cfg,
            self.batch_size,
            self.seed,
        )
        self.seed += 1
        by_index = dict(zip(ask, answers, strict=True))
        sure: dict[int, float] = {}
        if cfg.confidence:
            sure = dict(zip(ask, self.correct_probability(rollout, ask), strict=True))
        for i, r in enumerate(rows):
            item = rollout.items[i]
            r["queried"] = float(i in by_index)
            if i in by_index:
                eff = efficacy_reward(
                    by_index[i],
                    item.row,
                    item.clean_answers,
                    mode=cfg.answer_mode,
                    graded=cfg.graded,
                    require_clean_correct=cfg.require_clean_correct,
                    clean_min=cfg.clean_min,
                )
            else:
                eff = {
                    "efficacy": 0.0,
                    "edited_wrong_rate": math.nan,
                    "all_wrong": math.nan,
                    "clean_ok": float(clean_ok[i]),
                }
            r.update({k: v for k, v in eff.items() if k != "clean_correct_rate"})
            if cfg.confidence:
                r["correct_probability"] = sure.get(i, math.nan)
                if i in sure:
                    r["efficacy"] = (1.0 - sure[i]) * r["clean_ok"]
            r.update(composite_reward(r, cfg))
        return {k: np.array([r[k] for r in rows], dtype=float) for k in rows[0]}


def clean_answers(
    defender: Answerer,
    items: Sequence[AttackItem],
    config: AttackRewardConfig,
    batch_size: int,
    seed: int,
) -> None:
    """Fill each item's ``clean_answers`` (K samples of the frozen Defender on the clean image)."""
    answers = defender_answers(
        defender, [it.image for it in items], [it.row for it in items], config, batch_size, seed
    )
    for it, a in zip(items, answers, strict=True):
        it.clean_answers = list(a)
