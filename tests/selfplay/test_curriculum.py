"""Curriculum curation, round seeds and the round summary (pure functions, no models)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from aot.datasets import ImageFolderDataset
from aot.pipelines.selfplay.nodes import round_seed, summarize_rounds
from aot.pipelines.selfplay.schedule import load_rounds
from aot.selfplay import CurriculumConfig, curate
from aot.selfplay.curriculum import balanced_replay
from aot.selfplay.metrics import attack_outcomes


def _attacked() -> pd.DataFrame:
    # gate, gt_ok, valid, clean_ok, wrong_rate
    rows = [
        ("a", 1, 1, 1, 1, 1.0),  # kept (hardest)
        ("b", 1, 1, 1, 1, 0.67),  # kept
        ("c", 1, 1, 1, 1, 0.0),  # the Defender is not fooled
        ("d", 0, 1, 1, 1, 1.0),  # fails integrity
        ("e", 1, 0, 1, 1, 1.0),  # would change the answer
        ("f", 1, 1, 0, 1, 1.0),  # the edit does not show what was planned
        ("g", 1, 1, 1, 0, 1.0),  # the Defender was already wrong on the clean image
        ("h", 1, 1, 1, 1, math.nan),  # never asked
    ]
    return pd.DataFrame(
        {
            "record_id": [r[0] for r in rows],
            "image": [f"img-{r[0]}" for r in rows],
            "gate": [r[1] for r in rows],
            "gt_ok": [r[2] for r in rows],
            "valid": [r[3] for r in rows],
            "clean_ok": [r[4] for r in rows],
            "wrong_rate": [r[5] for r in rows],
            "edit_kind": ["add", "add", "remove", "add", "replace", "add", "add", "add"],
        }
    )


def _clean(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame(
        {"record_id": [f"c{i}" for i in range(n)], "image": [f"s{i}" for i in range(n)]}
    )


def test_curate_keeps_exactly_the_valid_fooling_edits_hardest_first() -> None:
    config = CurriculumConfig(min_wrong_rate=0.34, replay_fraction=0.5, min_size=0)
    mixed, stats = curate(_attacked(), _clean(), config, seed=0)
    attacks = mixed[mixed["source"] == "attack"]
    assert sorted(attacks["record_id"]) == ["a", "b"]
    assert len(mixed[mixed["source"] == "replay"]) == 2  # half of the mix
    assert stats["kept_attacks"] == 2 and stats["edits"] == 8
    assert stats["integrity_pass_rate"] == pytest.approx(7 / 8)
    assert stats["edit_mix_add"] == pytest.approx(6 / 8)
    # replayed rows train on their own (clean) image
    replay = mixed[mixed["source"] == "replay"]
    assert (replay["clean_image"] == replay["image"]).all()


def test_curate_caps_and_orders_by_hardness() -> None:
    config = CurriculumConfig(min_wrong_rate=0.0, replay_fraction=0.0, max_size=1, min_size=0)
    mixed, _ = curate(_attacked(), _clean(), config, seed=0)
    assert list(mixed["record_id"]) == ["a"]


def test_replay_fills_a_small_curriculum_up_to_min_size() -> None:
    config = CurriculumConfig(min_wrong_rate=0.34, replay_fraction=0.5, min_size=10)
    mixed, _ = curate(_attacked(), _clean(), config, seed=0)
    assert len(mixed) == 10 and (mixed["source"] == "attack").sum() == 2


def test_curate_falls_back_to_clean_data_when_nothing_fools() -> None:
    attacked = _attacked().assign(wrong_rate=0.0)
    mixed, stats = curate(attacked, _clean(5), CurriculumConfig(min_size=3), seed=0)
    assert stats["kept_attacks"] == 0
    assert (mixed["source"] == "replay").all() and len(mixed) == 3


def _labelled_clean() -> pd.DataFrame:
    # three existence questions per scene (as the source table has), half of them "Yes"
    rows = [("existence", "Yes")] * 30 + [("existence", "No")] * 30
    rows += [("attribute", c) for c in ("red", "blue", "green") for _ in range(5)]
    return pd.DataFrame(
        {
            "record_id": [f"c{i}" for i in range(len(rows))],
            "image": [f"s{i}" for i in range(len(rows))],
            "family": [r[0] for r in rows],
            "answer_text": [r[1] for r in rows],
        }
    )


def test_balanced_replay_restores_the_answer_mix_of_lopsided_attacks_first() -> None:
    # 8 fooled "Yes" existence questions, 1 "No", 1 red attribute one
    hard = pd.DataFrame(
        {
            "family": ["existence"] * 9 + ["attribute"],
            "answer_text": ["Yes"] * 8 + ["No", "red"],
        }
    )
    replay = balanced_replay(hard, _labelled_clean(), 9, seed=0)
    assert len(replay) == 9 and replay.index.is_unique
    existence = replay[replay["family"] == "existence"]["answer_text"]
    # "No" until "Yes" is less than one row above its clean half: 8 Yes, 7 No
    assert (existence == "No").sum() == 6 and (existence == "Yes").sum() == 0
    assert sorted(replay[replay["family"] == "attribute"]["answer_text"]) == [
        "blue",
        "green",
        "red",
    ]
    # then the smaller family grows; the same seed picks the same rows
    more = balanced_replay(hard, _labelled_clean(), 15, seed=0)
    assert (more["family"] == "attribute").sum() == 9
    assert list(balanced_replay(hard, _labelled_clean(), 15, seed=0).index) == list(more.index)


def test_balanced_replay_keeps_a_skewed_clean_answer_mix() -> None:
    # most counts are 1: the replay must keep that prior, not make every count equally common
    clean = pd.DataFrame(
        {
            "record_id": [f"c{i}" for i in range(16)],
            "image": [f"s{i}" for i in range(16)],
            "family": ["count"] * 16,
            "answer_text": ["1"] * 12 + ["2"] * 4,
        }
    )
    replay = balanced_replay(clean.head(0), clean, 8, seed=0)
    assert list(replay["answer_text"].value_counts().sort_index()) == [6, 2]


def test_curate_balances_replay_unless_told_not_to() -> None:
    attacked = _attacked().assign(family="existence", answer_text="Yes")
    balanced, _ = curate(attacked, _labelled_clean(), CurriculumConfig(min_size=10), seed=0)
    existence = balanced[balanced["family"] == "existence"]["answer_text"]
    assert abs((existence == "Yes").sum() - (existence == "No").sum()) <= 1
    assert (balanced["family"] == "attribute").sum() >= 4  # not 69% existence like the table
    uniform, _ = curate(
        attacked, _labelled_clean(), CurriculumConfig(min_size=10, balance_replay=False), seed=0
    )
    assert len(uniform) == len(balanced) == 10


@pytest.mark.parametrize(
    "bad",
    [
        {"replay_fraction": 1.0},
        {"balance_replay": "yes"},
        {"k": 0},
        {"min_wrong_rate": 2},
        {"nope": 1},
    ],
)
def test_curriculum_config_names_the_bad_key(bad: dict) -> None:
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        CurriculumConfig.from_dict(bad)


def test_attack_outcomes_count_success_only_where_clean_was_right() -> None:
    clean = np.array([True, True, True, False])
    edited = np.array([False, True, False, False])
    out = attack_outcomes(clean, edited, "x_")
    assert out == {
        "x_clean_accuracy": 0.75,
        "x_robust_accuracy": 0.25,
        "x_attack_success": pytest.approx(2 / 3),
    }


def test_round_seeds_differ_and_repeat() -> None:
    assert round_seed(42, "round_1") != round_seed(42, "round_2")
    assert round_seed(42, "round_2") == round_seed(42, "round_2")


def test_summary_has_one_row_per_round() -> None:
    metrics = [
        {
            "before_attack_success": 0.5,
            "after_attack_success": 0.2,
            "curriculum": {"kept_attacks": 3},
        },
        {"before_attack_success": 0.4, "after_attack_success": 0.3, "defender": {}},
    ]
    table, fig = summarize_rounds(*metrics)
    assert list(table["round"]) == [1, 2]
    assert list(table["after_attack_success"]) == [0.2, 0.3]
    assert table["kept_attacks"].iloc[0] == 3
    assert len(fig.axes) == 2


def test_schedule_must_number_rounds_in_order(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "s.yml"
    path.write_text("rounds:\n  round_1: {}\n  round_3: {}\n")
    with pytest.raises(ValueError, match="round_2"):
        load_rounds(path)
    path.write_text("rounds: {}\n")
    with pytest.raises(ValueError, match="at least one"):
        load_rounds(path)


def test_an_empty_image_folder_round_trips(tmp_path) -> None:  # noqa: ANN001
    from PIL import Image

    dataset = ImageFolderDataset(path=str(tmp_path / "imgs"))
    assert not dataset.exists()
    dataset.save({})
    assert dataset.exists() and dataset.load() == {}
    dataset.save({"a": Image.new("RGB", (4, 4), "red")})
    loaded = ImageFolderDataset(path=str(tmp_path / "imgs")).load()
    assert list(loaded) == ["a"] and loaded["a"]().size == (4, 4)
