"""Evaluation suite nodes on a tiny world slice with scripted Defenders (no model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from aot.attacker import build_box_edit_pipeline
from aot.pipelines.bootstrap_dataset.nodes import generate_source_scenes
from aot.pipelines.evaluation.suite_nodes import (
    answer_suites,
    attack_suite,
    build_suites,
    report_evaluation,
)


class SaysYes:
    """Answers every question `\\boxed{Yes}`: right exactly on the existence questions whose
    answer is Yes."""

    def generate(
        self,
        images,
        prompts,
        *,
        n=1,
        temperature=0.0,
        max_new_tokens=12,  # noqa: ANN001
        batch_size=32,
        seed=None,
        progress=False,
    ):  # noqa: ANN001
        return [["\\boxed{Yes}"] * n for _ in prompts]


@pytest.fixture(scope="module")
def world() -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    params = {"n_scenes": 16, "splits": {"train": 0.5, "val": 0.25, "test": 0.25}}
    scenes, records, images = generate_source_scenes({"image_size": 112, "grid": 28}, params, 3)
    return scenes, records, images


def test_suites_answers_and_report(world) -> None:  # noqa: ANN001
    scenes, records, images = world
    params = {
        "split": "test",
        "suites": {"clean_records": 40, "unseen_records": 6, "unseen": ["blur", "crop"]},
        "protocols": ["greedy", "strict"],
    }
    suites, extra = build_suites(records, images, params, 0)
    assert set(suites["suite"]) == {"clean", "unseen_blur", "unseen_crop"}
    assert (suites["suite"] == "unseen_blur").sum() == 6
    assert set(suites.loc[suites["suite"] != "clean", "image"]) <= set(extra)
    predictions = answer_suites(SaysYes(), suites, extra, images, params, 0)
    assert len(predictions) == 2 * len(suites)
    clean = predictions[(predictions["suite"] == "clean") & (predictions["protocol"] == "greedy")]
    expected = float((clean["answer_text"] == "Yes").mean())
    other = predictions.assign(correct=False)
    metrics, fig, report = report_evaluation(
        predictions, other, model_names=("base", "aot_round_1")
    )
    assert metrics["base/clean/greedy/accuracy/overall"] == pytest.approx(expected)
    assert metrics["aot_round_1/clean/greedy/accuracy/overall"] == 0.0
    assert "base/clean/strict/accuracy/overall" in metrics
    assert any(k.startswith("base/clean/greedy/pope/") for k in metrics)
    assert "| clean |" in report and "no verdict" in report
    assert np.isfinite(list(metrics.values())).all()
    # every unseen row points back at a clean record, so it is paired: SaysYes answers the
    # blurred image as it answers the clean one, so no blur breaks a clean-right question
    assert set(suites["source_record_id"]) <= set(
        suites.loc[suites["suite"] == "clean", "record_id"]
    )
    blur = suites[suites["suite"] == "unseen_blur"]
    clean_yes = records.set_index("record_id").loc[blur["source_record_id"], "answer_text"]
    assert metrics["base/unseen_blur/greedy/attack_success/overall"] == 0.0
    assert metrics["base/unseen_blur/greedy/pairs/overall"] == int((clean_yes == "Yes").sum())


def test_each_attackers_suite_is_the_same_whatever_ran_before(
    world,
    tiny_config,
    random_planner,  # noqa: ANN001
) -> None:
    """The evaluation edits with each Attacker in its own node, two at a time under
    `ParallelRunner`: a suite must not depend on which Attacker a process edited with before."""
    scenes, records, images = world
    params = {
        "split": "test",
        "suites": {
            "clean_records": 4,
            "attacked_records": 4,
            "attacked_edits_per_record": 2,
            "sampling_steps": 2,
            "unseen": [],
            "reward": {"validity_checks": []},  # a random editor paints no valid object
        },
    }
    attackers = {}
    for seed, name in enumerate(["cold", "round_1"]):
        attackers[name] = build_box_edit_pipeline(tiny_config, seed)
        attackers[name].planner = random_planner(seed)  # two Attackers that plan differently

    def suites(order: list[str]) -> dict[str, tuple[pd.DataFrame, dict]]:
        out = {}
        for name in order:
            torch.rand(7)  # whatever the process drew before
            out[name] = attack_suite(
                SaysYes(), scenes, records, images, params, 0, attackers[name], attacker_name=name
            )
        return out

    forward, backward = suites(["cold", "round_1"]), suites(["round_1", "cold"])
    for name in attackers:
        (table, edited), (table2, edited2) = forward[name], backward[name]
        pd.testing.assert_frame_equal(table, table2)
        assert list(edited) == list(edited2) == list(table["image"])
        assert all(np.array_equal(np.asarray(edited[k]), np.asarray(edited2[k])) for k in edited)
        assert set(table["suite"]) == {f"attacked_{name}"}
    assert not forward["cold"][0]["image"].isin(forward["round_1"][0]["image"]).any()
    cold, round_1 = ({k.split("-", 2)[2]: v for k, v in forward[n][1].items()} for n in attackers)
    same = [
        np.array_equal(np.asarray(cold[k]), np.asarray(round_1[k]))
        for k in cold.keys() & round_1.keys()
    ]
    assert same and not all(same)  # two Attackers, two sets of edits of the same records

    parts = [x for name in attackers for x in forward[name]]
    table, extra = build_suites(records, images, params, 0, *parts, attacker_names=tuple(attackers))
    assert table["suite"].value_counts().to_dict() == {
        "clean": 4,
        **{f"attacked_{n}": len(forward[n][0]) for n in attackers},
    }
    assert set(extra) == set(table.loc[table["suite"] != "clean", "image"])
    with pytest.raises(ValueError, match="3 attacked inputs for 2 Attackers"):
        build_suites(records, images, params, 0, *parts[:3], attacker_names=tuple(attackers))


def _paired_table(fooled: int) -> pd.DataFrame:
    """Ten clean-right questions, each edited once by two Attackers; `fooled` of the first
    Attacker's edits are answered wrong."""
    rows = []
    for i in range(10):
        common = {
            "protocol": "greedy",
            "family": "attribute",
            "source_record_id": f"r{i}",
            "extracted": "red",
        }
        rows.append({**common, "suite": "clean", "record_id": f"r{i}", "correct": True})
        for name in ("cold", "round_1"):
            wrong = name == "cold" and i < fooled
            rows.append(
                {
                    **common,
                    "suite": f"attacked_{name}",
                    "record_id": f"{name}-r{i}",
                    "correct": not wrong,
                }
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("base_fooled", "aot_fooled", "verdict"),
    [(4, 1, "lower than every"), (1, 4, "not lower than base")],
)
def test_report_pairs_attacked_rows_with_clean_answers(base_fooled, aot_fooled, verdict) -> None:  # noqa: ANN001
    metrics, _, report = report_evaluation(
        _paired_table(base_fooled), _paired_table(aot_fooled), model_names=("base", "aot_round_1")
    )
    assert metrics["base/attacked_cold/greedy/attack_success/overall"] == base_fooled / 10
    assert metrics["aot_round_1/attacked_pooled/greedy/attack_success/overall"] == aot_fooled / 20
    assert metrics["aot_round_1/attacked_pooled/greedy/pairs/overall"] == 20
    assert f"| attacked_pooled | {base_fooled / 20:.3f} ({base_fooled}/20) |" in report
    assert verdict in report


def test_report_compares_models_on_common_questions_too() -> None:
    # base: all ten right when clean, four broken by the cold Attacker. aot: those four wrong
    # when clean (and after the edit), nothing else broken: on its own pairs it looks robust
    # (0 of 12), on the six questions both answer right both are at 0 of 12.
    base = _paired_table(4)
    aot = _paired_table(0)
    lost = aot["source_record_id"].isin([f"r{i}" for i in range(4)])
    aot.loc[lost, "correct"] = False
    metrics, _, report = report_evaluation(base, aot, model_names=("base", "aot_round_1"))
    assert metrics["aot_round_1/attacked_pooled/greedy/attack_success/overall"] == 0.0
    assert metrics["aot_round_1/attacked_pooled/greedy/pairs/overall"] == 12
    assert metrics["base/attacked_pooled/greedy/attack_success/overall"] == 4 / 20
    for model in ("base", "aot_round_1"):
        assert metrics[f"{model}/attacked_pooled/greedy/common_pairs/overall"] == 12
        assert metrics[f"{model}/attacked_pooled/greedy/common_fooled/overall"] == 0
    plain, common = report.split("## Attack success on common questions (paired)")
    assert "lower than every other model" in plain
    assert "not lower than base" in common
    assert "| attacked_pooled | 0.000 (0/12) | 0.000 (0/12) |" in common
