"""POPE metrics against hand-computed numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from aot.evaluation.pope import pope_metrics, pope_rows


def table() -> pd.DataFrame:
    """random: truth Y Y N N / said Y N Y N  -> tp 1 fp 1 fn 1 tn 1.
    adversarial: truth Y Y N N / said Y Y Y (unparsed) -> tp 2 fp 1 fn 0 tn 1."""
    return pd.DataFrame(
        {
            "record_id": [f"r{i}" for i in range(8)],
            "subtype": ["random"] * 4 + ["adversarial"] * 4,
            "answer_text": ["Yes", "Yes", "No", "No"] * 2,
            "extracted": ["Yes", "No", "Yes", "No", "Yes", "Yes", "Yes", None],
        }
    )


def test_hand_computed_metrics() -> None:
    m = pope_metrics(table())
    assert m["random"] == {
        "accuracy": 0.5,
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "yes_ratio": 0.5,
        "n": 4,
    }
    adv = m["adversarial"]
    assert adv["accuracy"] == 0.75 and adv["recall"] == 1.0 and adv["yes_ratio"] == 0.75
    assert adv["precision"] == pytest.approx(2 / 3) and adv["f1"] == pytest.approx(0.8)
    overall = m["overall"]  # tp 3 fp 2 fn 1 tn 2
    assert overall["accuracy"] == pytest.approx(5 / 8)
    assert overall["precision"] == pytest.approx(3 / 5)
    assert overall["recall"] == pytest.approx(3 / 4)
    assert overall["f1"] == pytest.approx(2 / 3)
    assert overall["yes_ratio"] == pytest.approx(5 / 8) and overall["n"] == 8
    assert set(m) == {"overall", "random", "adversarial"}


def test_strict_accuracy_comes_from_correct_and_labels_explode() -> None:
    t = table()
    t["correct"] = [True, False, False, False, False, False, False, False]
    t.loc[0, "subtype"] = "random,popular"
    m = pope_metrics(t)
    assert m["overall"]["accuracy"] == pytest.approx(1 / 8)
    assert m["popular"]["n"] == 1 and m["popular"]["accuracy"] == 1.0
    assert m["random"]["n"] == 4  # the comma-joined row still counts for random


def test_response_fallback_and_zero_division() -> None:
    t = pd.DataFrame(
        {
            "subtype": ["popular", "popular"],
            "answer_text": ["No", "No"],
            "response": ["No, there is none.", "I cannot tell"],
        }
    )
    m = pope_metrics(t)["popular"]
    assert m["accuracy"] == 1.0 and m["yes_ratio"] == 0.0
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0


def test_errors_and_row_selection() -> None:
    bad = table()
    bad.loc[3, "answer_text"] = "maybe"
    with pytest.raises(ValueError, match="r3.*answer_text"):
        pope_metrics(bad)
    with pytest.raises(ValueError, match="empty"):
        pope_metrics(table().iloc[:0])
    mixed = table().assign(options=[[]] * 7 + [["Yes", "No"]])
    assert pope_rows(mixed)["record_id"].tolist() == [f"r{i}" for i in range(7)]
