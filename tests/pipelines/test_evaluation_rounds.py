"""Robustness by round: the tidy table, its pooled view, the figure, the wiring and the DVC plot,
all on a hand-made predictions table (no model)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from aot.pipelines.evaluation import create_pipeline
from aot.pipelines.evaluation.nodes import (
    attacked_by_round,
    model_round,
    plot_robustness_by_round,
    robustness_by_round,
)

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("base", "clean_rl", "aot_round_1", "aot_round_2")


def predictions(hits: dict[tuple[str, str], list[bool]]) -> pd.DataFrame:
    """A predictions table: for each (suite, family), one greedy row per entry of ``hits``
    (``correct`` = the entry) and one strict row, always wrong."""
    rows = []
    for (suite, family), correct in hits.items():
        for protocol in ("greedy", "strict"):
            for ok in correct:
                right = ok and protocol == "greedy"
                rows.append(
                    {"suite": suite, "family": family, "protocol": protocol, "correct": right}
                )
    return pd.DataFrame(rows)


def tables() -> list[pd.DataFrame]:
    """base: 1/2 right on attacked spatial, 0/1 on attacked count; each AOT round gets one more
    attacked spatial right; clean_rl is right everywhere. Two attacked suites of different size."""
    base = {
        ("clean", "spatial"): [True, True],
        ("attacked_cold", "spatial"): [True, False],
        ("attacked_round_1", "spatial"): [False, False, False, False],
        ("attacked_cold", "count"): [False],
    }
    round_1 = base | {("attacked_round_1", "spatial"): [True, False, False, False]}
    round_2 = base | {("attacked_round_1", "spatial"): [True, True, False, False]}
    clean_rl = {key: [True] * len(v) for key, v in base.items()}
    return [predictions(t) for t in (base, clean_rl, round_1, round_2)]


def test_model_round_places_base_rounds_and_baselines() -> None:
    assert model_round("base", 3) == ("aot", 0)
    assert model_round("aot_round_2", 3) == ("aot", 2)
    assert model_round("static_aug", 3) == ("static_aug", 3)


def test_robustness_by_round_table_values() -> None:
    table = robustness_by_round(*tables(), model_names=MODELS)
    assert list(table.columns) == [
        "model",
        "series",
        "round",
        "suite",
        "family",
        "protocol",
        "accuracy",
        "n",
    ]
    idx = table.set_index(["model", "suite", "family", "protocol"])
    assert idx.loc[("base", "attacked_cold", "spatial", "greedy"), "accuracy"] == 0.5
    assert idx.loc[("base", "attacked_cold", "spatial", "greedy"), "n"] == 2
    assert idx.loc[("base", "attacked_cold", "spatial", "strict"), "accuracy"] == 0.0
    # overall pools the suite's families: attacked_cold has 1/3 right (spatial 1/2, count 0/1)
    assert idx.loc[("base", "attacked_cold", "overall", "greedy"), "accuracy"] == pytest.approx(
        1 / 3
    )
    assert idx.loc[("base", "attacked_cold", "overall", "greedy"), "n"] == 3
    assert idx.loc[("aot_round_2", "attacked_round_1", "spatial", "greedy"), "accuracy"] == 0.5
    rounds = table.drop_duplicates("model").set_index("model")
    assert rounds.loc["base", ["series", "round"]].tolist() == ["aot", 0]
    assert rounds.loc["aot_round_2", ["series", "round"]].tolist() == ["aot", 2]
    # the baseline is its own series at the compute of every AOT round (2 here)
    assert rounds.loc["clean_rl", ["series", "round"]].tolist() == ["clean_rl", 2]
    # 4 models x (clean: spatial+overall; attacked_cold: spatial+count+overall;
    # attacked_round_1: spatial+overall) x 2 protocols
    assert len(table) == 4 * 7 * 2


def test_attacked_by_round_pools_attacked_suites_weighted_by_n() -> None:
    pooled = attacked_by_round(robustness_by_round(*tables(), model_names=MODELS))
    spatial = pooled[pooled["family"] == "spatial"].set_index("model")
    # attacked spatial rows: 2 (attacked_cold) + 4 (attacked_round_1) = 6, clean never counted
    assert spatial["n"].tolist() == [6, 6, 6, 6]
    assert spatial.loc["base", "accuracy"] == pytest.approx(1 / 6)
    assert spatial.loc["aot_round_1", "accuracy"] == pytest.approx(2 / 6)
    assert spatial.loc["aot_round_2", "accuracy"] == pytest.approx(3 / 6)
    assert spatial.loc["clean_rl", "accuracy"] == 1.0
    overall = pooled[pooled["family"] == "overall"].set_index("model")
    assert overall.loc["base", "accuracy"] == pytest.approx(1 / 7)
    strict = attacked_by_round(robustness_by_round(*tables(), model_names=MODELS), "strict")
    assert (strict["accuracy"] == 0.0).all()


def test_figure_has_a_panel_per_family_and_a_line_per_baseline() -> None:
    table = robustness_by_round(*tables(), model_names=MODELS)
    fig = plot_robustness_by_round(table)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["spatial", "count", "overall"]
    spatial = fig.axes[0]
    lines = {line.get_label(): line for line in spatial.get_lines()}
    assert list(lines["AOT"].get_xdata()) == [0, 1, 2]
    assert list(lines["AOT"].get_ydata()) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    # the baseline starts where the base Defender is and ends at the same compute
    assert list(lines["clean_rl"].get_xdata()) == [0, 2]
    assert list(lines["clean_rl"].get_ydata()) == pytest.approx([1 / 6, 1.0])
    only_clean = table[table["suite"] == "clean"]
    empty = plot_robustness_by_round(only_clean)  # smoke: no valid edit, still a figure
    assert [t.get_text() for t in empty.axes[0].texts] == ["no attacked rows"]


def test_evaluation_pipeline_writes_the_table_and_figure() -> None:
    pipeline = create_pipeline(rounds=["round_1", "round_2"])
    node = next(n for n in pipeline.nodes if n.name == "robustness_by_round")
    assert node.outputs == ["evaluation_robustness_by_round"]
    assert node.inputs == [
        f"evaluation_predictions_{m}"
        for m in ("base", "clean_rl", "static_aug", "aot_round_1", "aot_round_2")
    ]
    plot = next(n for n in pipeline.nodes if n.name == "plot_robustness_by_round")
    assert plot.inputs == ["evaluation_robustness_by_round"]
    assert plot.outputs == ["evaluation_robustness_by_round_plot"]


def test_building_the_evaluation_pipeline_warns_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from kedro.pipeline import Node

    # Kedro warns about dotted names once per process; make this build the first.
    monkeypatch.setattr(Node, "__dotted_dataset_name_warned__", False, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline = create_pipeline(rounds=["round_1"])
    assert "selfplay.round_1.defender" in pipeline.inputs()  # read under its namespaced name


def test_dvc_plots_show_renders_the_table_with_its_template(tmp_path: Path) -> None:
    """`dvc plots show` finds the top-level plot, the custom template and the CSV's rows."""
    (tmp_path / "conf" / "base").mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    shutil.copy(ROOT / "conf" / "base" / "selfplay_schedule.yml", tmp_path / "conf" / "base")
    csv = tmp_path / "data" / "08_reporting" / "evaluation" / "robustness_by_round.csv"
    csv.parent.mkdir(parents=True)
    robustness_by_round(*tables(), model_names=MODELS).to_csv(csv, index=False)
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run = {"cwd": tmp_path, "env": env, "capture_output": True, "text": True, "timeout": 120}
    init = subprocess.run([dvc, "init", "--no-scm"], **run)
    assert init.returncode == 0, init.stderr
    shutil.copytree(ROOT / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    shown = subprocess.run([dvc, "plots", "show", "--json", "robustness_by_round"], **run)
    assert shown.returncode == 0, shown.stderr
    (plot,) = json.loads(shown.stdout)["data"]["robustness_by_round"]
    spec = plot["content"]
    assert spec["facet"]["column"]["field"] == "family"
    assert spec["spec"]["encoding"]["x"]["field"] == "round"
    assert spec["spec"]["encoding"]["y"]["field"] == "accuracy"
    assert spec["spec"]["encoding"]["color"]["field"] == "series"
    assert "<DVC_METRIC" not in json.dumps(spec)  # every anchor filled
    values = spec["data"]["values"]
    assert len(values) == 4 * 7 * 2
    assert {v["series"] for v in values} == {"aot", "clean_rl"}
