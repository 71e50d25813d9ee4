"""The prompt parser: free text to stable, distinct class ids."""

from __future__ import annotations

import pytest

from aot.attacker import (
    NULL_CLASS,
    NUM_CLASS_EMBEDS,
    REMOVE_CLASS,
    BoxEditPipeline,
    class_prompt,
    class_to_edit,
    object_class,
    prompt_to_class,
)
from aot.world import COLORS, SHAPES


@pytest.mark.parametrize(
    "prompt",
    ["a small red triangle", "red triangle", "Add a LARGE Red Triangle!", "two red triangles"],
)
def test_known_object_prompts(prompt: str) -> None:
    assert prompt_to_class(prompt) == object_class("triangle", "red")


@pytest.mark.parametrize("prompt", ["remove the object", "Remove", "erase the blue star"])
def test_removal_prompts(prompt: str) -> None:
    assert prompt_to_class(prompt) == REMOVE_CLASS


@pytest.mark.parametrize(
    "prompt", ["a pink triangle", "a red blob", "red blue star", "a star", "", "red circle square"]
)
def test_unknown_prompts_name_the_prompt(prompt: str) -> None:
    with pytest.raises(ValueError, match="prompt"):
        prompt_to_class(prompt)
    try:
        prompt_to_class(prompt)
    except ValueError as err:
        assert repr(prompt) in str(err)


def test_class_ids_distinct_and_round_trip() -> None:
    ids = [object_class(s, c) for s in SHAPES for c in COLORS]
    assert sorted(ids) == list(range(len(SHAPES) * len(COLORS)))
    assert REMOVE_CLASS == len(ids) and NULL_CLASS == len(ids) + 1
    assert NUM_CLASS_EMBEDS == len(ids) + 2
    for i in [*ids, REMOVE_CLASS]:
        assert prompt_to_class(class_prompt(i)) == i
    assert class_to_edit(object_class("star", "blue")) == ("add", "star", "blue")


def test_class_ids_are_stable() -> None:
    """Pinned values: a reordered world vocabulary would silently remap saved checkpoints."""
    assert prompt_to_class("red circle") == 0
    assert prompt_to_class("green circle") == 1
    assert prompt_to_class("red square") == 6
    assert prompt_to_class("orange cross") == 41
    assert prompt_to_class("remove the object") == 42
    assert BoxEditPipeline.prompt_to_class("blue star") == 3 * 6 + 2


def test_unknown_vocab_in_object_class() -> None:
    with pytest.raises(ValueError, match="pink"):
        object_class("circle", "pink")
    with pytest.raises(ValueError, match="class id"):
        class_to_edit(NULL_CLASS)
