"""Effectiveness filter with a scripted Defender, the paired table and the gallery."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from aot.bootstrap import (
    PAIR_COLUMNS,
    ProceduralFiller,
    build_pairs,
    effectiveness,
    implant_candidates,
    plot_pair_gallery,
    propose_for_records,
    summarize_pairs,
)
from aot.rewards.answer import build_prompt
from aot.world import validate_records


def _key(image, prompt: str) -> tuple[str, str]:  # noqa: ANN001
    return hashlib.sha1(np.asarray(image).tobytes()).hexdigest(), prompt


class ScriptedDefender:
    """Answers fixed in advance per (image, prompt); records every call."""

    def __init__(self, script: dict[tuple[str, str], list[str]]) -> None:
        self.script = script
        self.calls: list[int] = []

    def generate(self, images, prompts, *, n, temperature, max_new_tokens, batch_size, seed):  # noqa: ANN001, ANN201
        self.calls.append(len(prompts))
        out = []
        for image, prompt in zip(images, prompts, strict=True):
            answers = self.script[_key(image, prompt)]
            out.append([answers[i % len(answers)] for i in range(n)])
        return out


def _right(row) -> str:  # noqa: ANN001
    return "\\boxed{" + row["answer"] + "}"


def _wrong(row) -> str:  # noqa: ANN001
    if not list(row["options"]):
        return "\\boxed{" + ("No" if row["answer"] == "Yes" else "Yes") + "}"
    return "\\boxed{" + ("A" if row["answer"] != "A" else "B") + "}"


@pytest.fixture(scope="module")
def candidates(extended):  # noqa: ANN001, ANN201
    exts, records = extended
    scenes = {e.scene.scene_id: e.scene for e in exts}
    picked = pd.concat(
        [records[records["family"] == f].head(1) for f in ("count", "attribute", "existence")]
    )
    cands = propose_for_records(picked, scenes, seed=1, n=2)
    clean = {e.scene.scene_id: e.image for e in exts}
    edited = implant_candidates(cands, clean, ProceduralFiller(), seed=1)
    assert cands.groupby("clean_record_id").size().tolist() == [2, 2, 2]
    return cands, clean, edited


def _script(cands, clean, edited):  # noqa: ANN001, ANN202
    """Per record (in order) the clean answers and per distractor the edited answers (K=3)."""
    plan = [  # (clean answers, [edited d0 answers, edited d1 answers])
        ("RRR", ["WWW", "RWW"]),  # effective, then 1/3 correct: not effective by default
        ("RRW", ["WWW", "WWW"]),  # clean only 2/3 correct: never effective by default
        ("RLR", ["WWW", "?W?"]),  # lenient format counts as correct; garbage counts as wrong
    ]
    script = {}
    rows = cands.to_dict("records")
    for (clean_plan, edited_plans), rid in zip(
        plan, cands["clean_record_id"].unique(), strict=True
    ):
        mine = [r for r in rows if r["clean_record_id"] == rid]
        prompt = build_prompt(mine[0]["question"], list(mine[0]["options"]))

        def say(code: str, row) -> list[str]:  # noqa: ANN001
            lenient = "boxed( " + row["answer"].lower() + " )"
            table = {"R": _right(row), "W": _wrong(row), "L": lenient, "?": "no idea"}
            return [table[c] for c in code]

        script[_key(clean[mine[0]["image"]], prompt)] = say(clean_plan, mine[0])
        for row, code in zip(mine, edited_plans, strict=True):
            script[_key(edited[row["edited_image"]], prompt)] = say(code, row)
    return script


def test_scripted_defender_keeps_exactly_the_effective_pairs(candidates) -> None:  # noqa: ANN001
    cands, clean, edited = candidates
    defender = ScriptedDefender(_script(cands, clean, edited))
    effect = effectiveness(defender, clean, edited, cands, k=3, temperature=1.0)
    assert defender.calls == [3, 6]  # each clean record answered once
    assert effect["clean_correct_rate"].tolist() == pytest.approx([1, 1, 2 / 3, 2 / 3, 1, 1])
    assert effect["edited_correct_rate"].tolist() == pytest.approx([0, 1 / 3, 0, 0, 0, 0])
    assert effect["effective"].tolist() == [True, False, False, False, True, True]
    loose = effectiveness(
        defender, clean, edited, cands, k=3, temperature=1.0, clean_min=0.6, edited_max=0.34
    )
    assert loose["effective"].tolist() == [True] * 6


def test_greedy_with_several_samples_is_rejected(candidates) -> None:  # noqa: ANN001
    cands, clean, edited = candidates
    with pytest.raises(ValueError, match="temperature"):
        effectiveness(ScriptedDefender({}), clean, edited, cands, k=3, temperature=0.0)


def test_pairs_table_follows_the_record_schema(candidates) -> None:  # noqa: ANN001
    cands, clean, edited = candidates
    effect = effectiveness(
        ScriptedDefender(_script(cands, clean, edited)), clean, edited, cands, k=3
    )
    pairs = build_pairs(cands, effect)
    assert tuple(pairs.columns[: len(PAIR_COLUMNS)]) == PAIR_COLUMNS
    validate_records(pairs, {k: v.size for k, v in clean.items()})
    assert set(pairs["edit_kind"]) == {"add"} and pairs["edited_image"].is_unique
    assert (pairs["split"] == cands["split"].to_numpy()).all()
    kept = build_pairs(cands, effect, effective_only=True)
    assert len(kept) == 3 and kept["effective"].all()
    summary = summarize_pairs(pairs)
    assert summary["n_pairs"] == 6 and summary["effective_rate"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="missing"):
        build_pairs(cands.drop(columns=["split"]), effect)


def test_gallery_has_two_panels_per_pair(candidates) -> None:  # noqa: ANN001
    cands, clean, edited = candidates
    effect = effectiveness(
        ScriptedDefender(_script(cands, clean, edited)), clean, edited, cands, k=3
    )
    pairs = build_pairs(cands, effect)
    fig = plot_pair_gallery(pairs, clean, edited, n=4)
    assert len(fig.axes) == 8
    assert "clean:" in fig.axes[0].get_xlabel() and "edited:" in fig.axes[1].get_xlabel()
    assert len(plot_pair_gallery(pairs, clean, edited, n=50).axes) == 2 * len(pairs)


def test_the_real_tiny_defender_fits_the_filter(candidates, tiny_defender_dir) -> None:  # noqa: ANN001
    from aot.defender import Defender

    cands, clean, edited = candidates
    defender = Defender.from_pretrained(tiny_defender_dir)
    effect = effectiveness(defender, clean, edited, cands.head(2), k=2, max_new_tokens=4)
    assert len(effect) == 2 and effect["clean_answers"].map(len).tolist() == [2, 2]
    assert effect["edited_correct_rate"].between(0, 1).all()
