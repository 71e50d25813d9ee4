"""Benchmark-native answer extraction: rule order and leniency as described in §6.2."""

from __future__ import annotations

import pytest

from aot.evaluation.extraction import extract_hrbench, extract_pope, extract_vstar, get_extractor


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The answer is: no, although yes is tempting", "No"),  # rule 1
        ("Yes. Final answer: NO", "No"),  # rule 1 wins over the earlier standalone word
        ("I would say \\boxed{yes}", "Yes"),
        ("no doubt, boxed(Yes)", "Yes"),  # rule 2 beats the earlier word "no"
        ("Nope, not really... yes", "Yes"),  # "Nope" is not a standalone word
        ("eyes and noses", None),
        (None, None),
    ],
)
def test_pope_rules(response: str | None, expected: str | None) -> None:
    assert extract_pope(response) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("$\\boxed{\\text{c}}$", "C"),
        ("Answer: \\boxed{(D)}", "D"),
        ("after thought the answer is b.", "B"),
        ("the answer is a glove", "A"),  # documented leniency
        ("  (C) because ...", "C"),
        ("Blue is the colour", "B"),  # first character an uppercase A-E: counts as a letter
        ("blue is the colour", None),
        ("The glove is black", None),  # "T" is not A-E and no rule matches
    ],
)
def test_vstar_rules(response: str, expected: str | None) -> None:
    assert extract_vstar(response) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("A guess: \\boxed{C}", "C"),  # boxed beats the earlier capital A
        ("Clearly the answer is D", "D"),  # 'answer is' beats the earlier capital C
        ("Based on the image, red", "B"),  # first uppercase A-D anywhere
        ("the sign is red", None),
    ],
)
def test_hrbench_rules(response: str, expected: str | None) -> None:
    assert extract_hrbench(response) == expected


def test_registry() -> None:
    assert get_extractor("hallusionbench") is extract_pope
    with pytest.raises(ValueError, match="known"):
        get_extractor("mmstar")
