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

    tables = [forward[name][0] for name in attackers]
    table, extra = build_suites(
        records, images, params, 0, *tables, attacker_names=tuple(attackers)
    )
    assert table["suite"].value_counts().to_dict() == {
        "clean": 4,
        **{f"attacked_{n}": len(forward[n][0]) for n in attackers},
    }
    assert extra == {}  # the edited images stay with their Attacker's node output
    with pytest.raises(ValueError, match="1 attacked tables for 2 Attackers"):
        build_suites(records, images, params, 0, *tables[:1], attacker_names=tuple(attackers))

    edited = [forward[name][1] for name in attackers]
    params["protocols"] = ["greedy"]
    answered = answer_suites(SaysYes(), table, extra, images, params, 0, *edited)
    assert answered["suite"].value_counts().to_dict() == table["suite"].value_counts().to_dict()
    with pytest.raises(KeyError, match="eval-round_1-"):
        answer_suites(SaysYes(), table, extra, images, params, 0, *edited[:1])
