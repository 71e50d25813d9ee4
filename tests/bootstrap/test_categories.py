"""Forbidden categories read off question specs, and prompt parsing."""

from __future__ import annotations

import pytest

from aot.bootstrap import Forbidden, forbidden_for_spec, forbidden_for_specs, parse_prompt


@pytest.mark.parametrize(
    ("spec", "blocked", "allowed"),
    [
        ({"family": "count", "filter": {"shape": "star"}}, ("red", "star"), ("red", "cross")),
        ({"family": "count", "filter": {"color": "red"}}, ("red", "cross"), ("blue", "star")),
        (
            {"family": "attribute", "target": {"shape": "circle"}},
            ("blue", "circle"),
            ("red", "star"),
        ),
        (
            {"family": "existence", "color": "red", "shape": "star"},
            ("red", "star"),
            ("red", "cross"),
        ),
        (
            {"family": "spatial", "a": {"shape": "star"}, "b": {"color": "red", "shape": "cross"}},
            ("green", "star"),
            ("green", "cross"),
        ),
    ],
)
def test_forbidden_categories_per_family(spec, blocked, allowed) -> None:  # noqa: ANN001
    forbidden = forbidden_for_spec(spec)
    assert forbidden.blocks(*blocked) and not forbidden.blocks(*allowed)


def test_forbidden_union_skips_empty_specs() -> None:
    union = forbidden_for_specs(
        [
            '{"family": "count", "filter": {"shape": "star"}}',
            "",
            {"family": "count", "filter": {"color": "red"}},
        ]
    )
    assert union == Forbidden(shapes=frozenset({"star"}), colors=frozenset({"red"}))


def test_parse_prompt_reads_size_colour_and_shape() -> None:
    assert parse_prompt("small red triangle") == ("small", "red", "triangle")
    assert parse_prompt("A Green Cross.") == (None, "green", "cross")
    assert parse_prompt("two blue crosses") == (None, "blue", "cross")
    with pytest.raises(ValueError, match="shiny silver canister"):
        parse_prompt("shiny silver canister")
