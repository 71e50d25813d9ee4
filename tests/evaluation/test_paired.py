"""Paired attack success: edited rows against the same model's clean answers."""

from __future__ import annotations

import pandas as pd
import pytest

from aot.evaluation import attack_success, common_attack_success


def _row(suite: str, record: str, source: str, correct: bool, protocol: str = "greedy") -> dict:
    family = "count" if source == "r2" else "attribute"
    return {
        "suite": suite,
        "protocol": protocol,
        "family": family,
        "record_id": record,
        "source_record_id": source,
        "correct": correct,
    }


@pytest.fixture
def predictions() -> pd.DataFrame:
    rows = [
        _row("clean", "r1", "r1", True),
        _row("clean", "r2", "r2", True),
        _row("clean", "r3", "r3", False),  # wrong when clean: its edits never count
        _row("attacked_a", "a-r1-e0", "r1", False),  # fooled
        _row("attacked_a", "a-r1-e1", "r1", True),
        _row("attacked_a", "a-r2-e0", "r2", True),
        _row("attacked_a", "a-r3-e0", "r3", False),
        _row("attacked_b", "b-r2-e0", "r2", False),  # fooled
        _row("unseen_blur", "r1-blur", "r1", False),  # fooled
        # strict pairs with strict: r1 is wrong when clean there, so only r2 counts
        _row("clean", "r1", "r1", False, "strict"),
        _row("clean", "r2", "r2", True, "strict"),
        _row("attacked_a", "a-r1-e0", "r1", False, "strict"),
        _row("attacked_a", "a-r2-e0", "r2", True, "strict"),
    ]
    return pd.DataFrame(rows)


def test_counts_only_clean_right_pairs_per_protocol(predictions: pd.DataFrame) -> None:
    out = attack_success(predictions, pooled={"attacked_pooled": "attacked_"})
    overall = out[out["family"] == "overall"].set_index(["suite", "protocol"])
    assert overall.loc[("attacked_a", "greedy"), ["pairs", "fooled"]].tolist() == [3, 1]
    assert overall.loc[("attacked_a", "greedy"), "attack_success"] == pytest.approx(1 / 3)
    assert overall.loc[("attacked_b", "greedy"), ["pairs", "fooled"]].tolist() == [1, 1]
    assert overall.loc[("unseen_blur", "greedy"), ["pairs", "fooled"]].tolist() == [1, 1]
    assert overall.loc[("attacked_pooled", "greedy"), ["pairs", "fooled"]].tolist() == [4, 2]
    assert overall.loc[("attacked_a", "strict"), ["pairs", "fooled"]].tolist() == [1, 0]
    assert "clean" not in set(out["suite"])
    by_family = out[(out["suite"] == "attacked_pooled") & (out["protocol"] == "greedy")]
    counts = by_family.set_index("family")[["pairs", "fooled"]].to_dict("index")
    assert counts["attribute"] == {"pairs": 2, "fooled": 1}
    assert counts["count"] == {"pairs": 2, "fooled": 1}


def test_no_pairs_gives_an_empty_table(predictions: pd.DataFrame) -> None:
    all_wrong = predictions.assign(correct=False)
    assert attack_success(all_wrong).empty


def test_missing_column_and_duplicate_clean_rows_are_named(predictions: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="source_record_id"):
        attack_success(predictions.drop(columns="source_record_id"))
    doubled = pd.concat([predictions, predictions.head(1)], ignore_index=True)
    with pytest.raises(ValueError, match="duplicate record_id in suite 'clean'"):
        attack_success(doubled)


def test_common_pairs_are_the_questions_every_model_answers_right(
    predictions: pd.DataFrame,
) -> None:
    # model "weak" gets r1 wrong when clean (greedy), so r1 leaves both models' common pairs;
    # alone, "weak" would look more robust than "strong" (fewer pairs, none fooled).
    weak = predictions.copy()
    clean_r1 = (weak["suite"] == "clean") & (weak["record_id"] == "r1")
    weak.loc[clean_r1 & (weak["protocol"] == "greedy"), "correct"] = False
    weak.loc[weak["suite"] != "clean", "correct"] = True  # never fooled on its own pairs
    models = {"strong": predictions, "weak": weak}
    out = common_attack_success(models, pooled={"attacked_pooled": "attacked_"})
    overall = out[out["family"] == "overall"].set_index(["model", "suite", "protocol"])
    # strong: only r2's edits remain (a-r2-e0 right, b-r2-e0 fooled)
    assert overall.loc[("strong", "attacked_pooled", "greedy"), ["pairs", "fooled"]].tolist() == [
        2,
        1,
    ]
    assert overall.loc[("weak", "attacked_pooled", "greedy"), ["pairs", "fooled"]].tolist() == [
        2,
        0,
    ]
    assert ("strong", "unseen_blur", "greedy") not in overall.index  # r1 only: not common
    # strict: r1 is wrong for both, r2 right for both: the common set is r2, as alone
    alone = attack_success(predictions, pooled={"attacked_pooled": "attacked_"})
    alone = alone[(alone["family"] == "overall") & (alone["protocol"] == "strict")]
    strict = overall.xs("strict", level="protocol").loc["strong"]
    assert strict["pairs"].tolist() == alone.set_index("suite")["pairs"].tolist()
    # one model alone: the common set is its own clean-right set
    single = common_attack_success({"strong": predictions}).drop(columns="model")
    pd.testing.assert_frame_equal(single, attack_success(predictions))
