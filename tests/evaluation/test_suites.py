"""Suite summaries, flat metric keys and multi-seed aggregation."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from aot.evaluation.suites import aggregate_seeds, flatten_metrics, mean_and_spread, summarize


def predictions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "family": ["attribute", "attribute", "count", "existence", "existence"],
            "subtype": ["", "", "", "random", "random"],
            "options": [["red", "blue"], ["red", "blue"], ["1", "2"], [], []],
            "answer_text": ["red", "blue", "2", "Yes", "No"],
            "extracted": ["red", None, "2", "Yes", "Yes"],
            "correct": [True, False, True, True, False],
        }
    )


def test_summarize_accuracy_per_family_and_pope() -> None:
    s = summarize(predictions())
    assert s["accuracy"] == {"attribute": 0.5, "count": 1.0, "existence": 0.5, "overall": 0.6}
    assert s["parsed"]["attribute"] == 0.5 and s["n"]["overall"] == 5
    assert s["pope"]["random"]["yes_ratio"] == 1.0 and s["pope"]["random"]["n"] == 2
    no_pope = summarize(predictions().assign(subtype=""))
    assert "pope" not in no_pope


def test_flatten_metrics_key_scheme() -> None:
    nested = {"accuracy": {"overall": 0.6, "VD/figure": 0.5}, "n": {"overall": 5}, "note": "x"}
    flat = flatten_metrics(nested, prefix="aot_round_3/attacked_round_2")
    assert flat == {
        "aot_round_3/attacked_round_2/accuracy/VD-figure": 0.5,
        "aot_round_3/attacked_round_2/accuracy/overall": 0.6,
        "aot_round_3/attacked_round_2/n/overall": 5,
    }
    assert list(flat) == sorted(flat)
    full = flatten_metrics({"aot round 3": {"clean": summarize(predictions())}})
    assert full["aot_round_3/clean/accuracy/attribute"] == 0.5
    assert full["aot_round_3/clean/pope/random/f1"] == pytest.approx(2 / 3)
    nan_free = flatten_metrics({"a": math.nan, "b": None, "c": True, "d": 2.5})
    assert nan_free == {"c": 1, "d": 2.5}
    json.dumps(full, allow_nan=False)  # strict JSON for DVC


def test_mean_and_spread() -> None:
    m = mean_and_spread({0: 0.5, 1: 0.7, 2: 0.9})
    assert m["mean"] == pytest.approx(0.7) and m["std"] == pytest.approx(0.2) and m["n"] == 3
    assert mean_and_spread([0.4]) == {"mean": 0.4, "std": 0.0, "n": 1}
    assert mean_and_spread([0.4, math.nan])["n"] == 1
    with pytest.raises(ValueError, match="finite"):
        mean_and_spread([])


def test_aggregate_seeds() -> None:
    by_seed = {0: {"accuracy": {"overall": 0.5}}, 1: {"accuracy": {"overall": 0.7}, "x": 1.0}}
    agg = aggregate_seeds(by_seed)
    assert agg["accuracy"]["overall"]["mean"] == pytest.approx(0.6)
    assert agg["accuracy"]["overall"]["n"] == 2 and agg["x"]["n"] == 1
    flat = flatten_metrics(agg, prefix="base/clean")
    assert flat["base/clean/accuracy/overall/std"] == pytest.approx(math.sqrt(0.02))
