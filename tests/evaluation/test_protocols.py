"""answer_table: greedy and strict (multi-trial) protocols with scripted Defenders."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from aot.evaluation.protocols import answer_table, answer_tables
from aot.rewards import build_prompt

RIGHT = {
    "What color is the circle?": "\\boxed{red}",
    "How many stars are there?": "\\boxed{2}",
    "Is there a red square in the image?": "\\boxed{Yes}",
    "Where is the star relative to the cross?": "boxed( Above )",
}
WRONG = {
    "What color is the circle?": "\\boxed{blue}",
    "How many stars are there?": "\\boxed{3}",
    "Is there a red square in the image?": "\\boxed{No}",
    "Where is the star relative to the cross?": "\\boxed{left}",
}


def question_of(prompt: str) -> str:
    """The record question contained in a protocol prompt."""
    return next(q for q in RIGHT if q in prompt)


def test_greedy_asks_once_and_scores_with_the_protocol(scripted, records, images) -> None:
    wrong_count = {**RIGHT, "How many stars are there?": WRONG["How many stars are there?"]}
    defender = scripted(lambda p, k, rng: wrong_count[question_of(p)])
    out = answer_table(defender, records, images, protocol="greedy", temperature=1.0, trials=3)
    assert out["correct"].tolist() == [True, False, True, True]
    assert out["extracted"].tolist() == ["red", "3", "Yes", "above"]
    assert out["trials"].tolist() == [1, 1, 1, 1]
    assert out["responses"].map(len).tolist() == [1, 1, 1, 1]
    assert [c["temperature"] for c in defender.calls] == [0.0]  # greedy ignores temperature
    pairs = zip(records["question"], records["options"], strict=True)
    expected = [build_prompt(q, o, "word") for q, o in pairs]
    assert defender.calls[0]["prompts"] == expected
    assert out["record_id"].tolist() == records["record_id"].tolist()


def test_strict_needs_all_trials_and_keeps_replies_to_the_first_wrong(
    scripted, records, images
) -> None:
    plan = {
        "What color is the circle?": "RRR",
        "How many stars are there?": "WRR",
        "Is there a red square in the image?": "RRW",
        "Where is the star relative to the cross?": "RWR",
    }

    def script(prompt: str, k: int, rng: np.random.Generator) -> str:
        q = question_of(prompt)
        return RIGHT[q] if plan[q][k] == "R" else WRONG[q]

    defender = scripted(script)
    out = answer_table(defender, records, images, protocol="strict", trials=3, temperature=0.7)
    assert out["correct"].tolist() == [True, False, False, False]
    assert out["trials"].tolist() == [3, 1, 3, 2]
    # sampled trials come from one call with n = trials; replies after the first wrong are dropped
    assert [(c["n"], c["temperature"]) for c in defender.calls] == [(3, 0.7)]
    assert out.loc[1, "responses"] == ["\\boxed{3}"]
    assert out.loc[3, "responses"] == ["boxed( Above )", "\\boxed{left}"]
    # the decisive reply is the failing one, and it is what `extracted` reads
    assert out.loc[2, "response"] == "\\boxed{No}" and out.loc[2, "extracted"] == "No"
    assert out.loc[0, "responses"] == ["\\boxed{red}"] * 3


def test_strict_at_temperature_zero_repeats_greedy(scripted, records, images) -> None:
    defender = scripted(lambda p, k, rng: RIGHT[question_of(p)])
    out = answer_table(defender, records, images, protocol="strict", trials=2, temperature=0.0)
    assert out["correct"].all() and out["trials"].tolist() == [2, 2, 2, 2]
    # greedy repeats cannot come from one call (n > 1 needs sampling): one call per trial
    assert [(c["n"], c["temperature"]) for c in defender.calls] == [(1, 0.0), (1, 0.0)]


def sampled_table(seed: int, scripted: Any, records: pd.DataFrame, images: dict) -> pd.DataFrame:
    """Strict answers of a Defender that samples its reply from the call's seed."""
    many = pd.concat([records] * 5, ignore_index=True)
    many["record_id"] = [f"r{i}" for i in range(len(many))]
    defender = scripted(
        lambda p, k, rng: RIGHT[question_of(p)] if rng.random() < 0.7 else WRONG[question_of(p)]
    )
    return answer_table(defender, many, images, protocol="strict", batch_size=3, seed=seed)


def test_strict_is_deterministic_for_a_seed(scripted, records, images) -> None:
    first = sampled_table(0, scripted, records, images)
    again = sampled_table(0, scripted, records, images)
    other = sampled_table(1, scripted, records, images)
    assert first["responses"].tolist() == again["responses"].tolist()
    assert first["responses"].tolist() != other["responses"].tolist()
    assert 0 < first["correct"].sum() < len(first)  # a mix, so the comparison means something


def test_chunks_get_distinct_seeds(scripted, records, images) -> None:
    defender = scripted(lambda p, k, rng: RIGHT[question_of(p)])
    answer_table(defender, records, images, protocol="strict", trials=1, batch_size=1)
    assert len(defender.calls) == 4
    assert len({c["seed"] for c in defender.calls}) == 4


def test_prompt_column_and_benchmark_extractor(scripted, images) -> None:
    table = pd.DataFrame(
        {
            "record_id": ["a", "b"],
            "image": ["s0", "s1"],
            "prompt": ["custom prompt a", "custom prompt b"],
            "answer": ["Yes", "No"],
            "answer_text": ["Yes", "No"],
        }
    )
    defender = scripted(lambda p, k, rng: "yes, there is one")
    out = answer_table(defender, table, images, extractor="pope")
    assert defender.calls[0]["prompts"] == ["custom prompt a", "custom prompt b"]
    assert out["extracted"].tolist() == ["Yes", "Yes"]
    assert out["correct"].tolist() == [True, False]


def test_argument_errors(scripted, records, images) -> None:
    defender = scripted(lambda p, k, rng: "x")
    with pytest.raises(ValueError, match="protocol"):
        answer_table(defender, records, images, protocol="best_of")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="options"):
        answer_table(defender, records.drop(columns="options"), images)
    with pytest.raises(ValueError, match="unknown extractor"):
        answer_table(defender, records, images, extractor="mmmu")

    class Short:
        def generate(self, images, prompts, **kwargs):  # noqa: ANN001, ANN003, ANN202
            return [["\\boxed{red}"]]

    with pytest.raises(ValueError, match="answer lists"):
        answer_table(Short(), records, images)
    with pytest.raises(KeyError, match="s9"):
        answer_table(defender, records.assign(image="s9"), images)


class SeededDefender:
    """Greedy: one fixed reply per question; samples: drawn from the call's seed. Offers
    ``greedy_first`` like ``aot.defender.Defender`` when ``coupled``."""

    def __init__(self, coupled: bool) -> None:
        self.answers_greedy_first = coupled
        self.calls: list[tuple[int, float, bool]] = []

    def generate(
        self, images, prompts, *, n=1, temperature=0.0, seed=None, greedy_first=False, **_
    ):  # noqa: ANN001, ANN003, ANN201, E501
        assert not greedy_first or self.answers_greedy_first
        self.calls.append((n, temperature, greedy_first))
        rng = np.random.default_rng(seed)
        out = []
        for prompt in prompts:
            q = question_of(prompt)
            greedy = WRONG[q] if "stars" in q else RIGHT[q]
            draws = [RIGHT[q] if rng.random() < 0.7 else WRONG[q] for _ in range(n)]
            out.append(
                ([greedy] if greedy_first else []) + (draws if temperature > 0 else [greedy])
            )
        return out


def test_greedy_and_strict_in_one_call_give_the_separate_answers(records, images) -> None:
    many = pd.concat([records] * 5, ignore_index=True)
    many["record_id"] = [f"r{i}" for i in range(len(many))]
    coupled, separate = SeededDefender(coupled=True), SeededDefender(coupled=False)
    settings = dict(protocols=("greedy", "strict"), batch_size=3, seed=4)
    both = answer_tables(coupled, many, images, **settings)
    apart = answer_tables(separate, many, images, **settings)
    chunks = -(-len(many) // 3)
    assert coupled.calls == [(3, 1.0, True)] * chunks  # one call per chunk for both protocols
    assert separate.calls == [(1, 0.0, False)] * chunks + [(3, 1.0, False)] * chunks
    for protocol in ("greedy", "strict"):
        pd.testing.assert_frame_equal(both[protocol], apart[protocol])
        one = answer_table(
            SeededDefender(coupled=True), many, images, protocol=protocol, seed=4, batch_size=3
        )
        pd.testing.assert_frame_equal(both[protocol], one)
    assert both["greedy"]["correct"].tolist() != both["strict"]["correct"].tolist()
    assert both["greedy"]["trials"].eq(1).all() and both["strict"]["trials"].max() == 3
