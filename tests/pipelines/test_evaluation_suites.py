"""Evaluation suite nodes on a tiny world slice with scripted Defenders (no model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aot.pipelines.bootstrap_dataset.nodes import generate_source_scenes
from aot.pipelines.evaluation.suite_nodes import answer_suites, build_suites, report_evaluation


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
    suites, extra = build_suites(None, scenes, records, images, params, 0)
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
