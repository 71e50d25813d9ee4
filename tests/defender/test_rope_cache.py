"""Rope positions inside `cached_rope_index` are Qwen2.5-VL's own, each row layout computed
once."""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aot.defender import Defender
from aot.defender.rope_cache import cached_rope_index, image_runs
from aot.defender.shared_prefill import rope_owner

PROMPTS = ["How many red discs are there?", "Is there a ring?", "Which shape is left of the star?"]


def _images(seed: int, sizes: list[int]) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for s in sizes]


def _batch(defender: Defender, prompts: list[str], sizes: list[int], seed: int = 0) -> dict:
    texts = [defender.chat_text(p) for p in prompts]
    return defender.processor(
        images=_images(seed, sizes), text=texts, padding=True, return_tensors="pt"
    )


def _rope(owner, batch: dict, mask: bool = True) -> tuple:  # noqa: ANN001
    return owner.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"] if mask else None,
    )


def _counting(owner, monkeypatch) -> list[int]:  # noqa: ANN001
    """The batch size of each call that reaches the model's own `get_rope_index`."""
    rows: list[int] = []
    original = type(owner).get_rope_index

    def counting(self, input_ids, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        rows.append(int(input_ids.shape[0]))
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(owner), "get_rope_index", counting)
    return rows


@pytest.fixture
def defender(tiny_defender_dir: Path) -> Defender:
    return Defender.from_pretrained(tiny_defender_dir)


@pytest.mark.parametrize("mask", [True, False], ids=["padded", "no mask"])
def test_positions_equal_the_models_own_with_each_layout_computed_once(
    defender: Defender, monkeypatch: pytest.MonkeyPatch, mask: bool
) -> None:
    owner = rope_owner(defender.model)
    # three prompt lengths, two image sizes (different grids), left padding
    first = _batch(defender, [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[2]], [56, 56, 84, 56])
    second = _batch(defender, [PROMPTS[1], PROMPTS[0], PROMPTS[2]], [56, 84, 56], seed=1)
    if not mask:  # rows of one length: no padding to mask
        first = _batch(defender, [PROMPTS[0], PROMPTS[0]], [56, 84])
        second = _batch(defender, [PROMPTS[0], PROMPTS[0]], [84, 56], seed=1)
    expected = [_rope(owner, b, mask) for b in (first, second)]
    rows = _counting(owner, monkeypatch)
    cache: dict = {}
    with cached_rope_index(defender.model, cache):
        got = [_rope(owner, b, mask) for b in (first, second)]
    for (pos, delta), (pos2, delta2) in zip(expected, got, strict=True):
        assert pos.dtype == pos2.dtype and torch.equal(pos, pos2)
        assert delta.dtype == delta2.dtype and torch.equal(delta, delta2)
    # one single-row call per distinct (token types, grid) layout, across both batches
    assert rows == [1] * len(cache) and len(cache) == (4 if mask else 2)
    if mask:  # a layout differs from a row whose text has the same length but another grid
        assert len({key[2] for key in cache}) == 2


def test_calls_it_does_not_serve_go_to_the_model(
    defender: Defender, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = rope_owner(defender.model)
    batch = _batch(defender, PROMPTS[:2], [56, 56])
    video = batch["mm_token_type_ids"].clone()
    video[video == 1] = 2
    rows = _counting(owner, monkeypatch)
    cache: dict = {}
    with cached_rope_index(defender.model, cache):
        with pytest.raises(TypeError):  # the model's own error: video tokens, no video grids
            owner.get_rope_index(
                batch["input_ids"],
                mm_token_type_ids=video,
                image_grid_thw=batch["image_grid_thw"],
                attention_mask=batch["attention_mask"],
            )
        with pytest.raises(StopIteration):  # the model's own error: no grid for an image
            owner.get_rope_index(
                batch["input_ids"],
                mm_token_type_ids=batch["mm_token_type_ids"],
                image_grid_thw=batch["image_grid_thw"][:0],
                attention_mask=batch["attention_mask"],
            )
        empty = {k: v[:0] for k, v in batch.items() if k != "pixel_values"}
        positions, deltas = _rope(owner, empty)
        assert positions.shape == (3, 0, batch["input_ids"].shape[1]) and deltas.shape[0] == 0
    assert rows == [2, 2, 0] and not cache  # all three whole batches went to the model


def test_image_runs_counts_maximal_runs_of_image_tokens() -> None:
    assert image_runs(np.array([], dtype=np.int64)) == 0
    assert image_runs(np.array([0, 0, 0])) == 0
    assert image_runs(np.array([1, 1, 0, 0, 1, 0, 1, 1])) == 3
    assert image_runs(np.array([0, 1, 1, 1])) == 1


def test_the_model_is_restored_even_on_an_exception(defender: Defender) -> None:
    owner = rope_owner(defender.model)
    own = type(owner)
    batch = _batch(defender, PROMPTS[:1], [56])
    outer: dict = {}
    with pytest.raises(RuntimeError), cached_rope_index(defender.model, outer):
        with cached_rope_index(defender.model, inner := {}):
            _rope(owner, batch)
        assert len(inner) == 1 and not outer  # the inner block's cache served its call
        raise RuntimeError("boom")
    assert type(owner) is own and "_aot_rope_cache" not in vars(owner)
    assert "get_rope_index" not in vars(owner)  # the instance's patch removed
    pickle.dumps(defender.model)  # pickles as before


def test_a_model_without_multimodal_rope_is_left_alone() -> None:
    model = torch.nn.Linear(2, 2)
    with cached_rope_index(model, cache := {}):
        assert type(model) is torch.nn.Linear
    assert not cache


def test_defender_answers_and_scores_the_same(
    tiny_defender_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aot.defender.model as model

    images = _images(2, [56, 84, 56, 56, 84, 56])
    prompts = [PROMPTS[i % 3] for i in range(6)]
    kwargs = dict(n=3, temperature=1.0, seed=0, batch_size=4, greedy_first=True)
    defender = Defender.from_pretrained(tiny_defender_dir)
    rows = _counting(rope_owner(defender.model), monkeypatch)
    cached = [defender.generate(images, prompts, **kwargs) for _ in range(2)]
    scores = defender.completion_probability(images, prompts, ["1"] * 6, batch_size=4)
    assert rows and all(r == 1 for r in rows)  # only new layouts, one row each
    assert len(rows) == len(defender._rope_rows)
    monkeypatch.setattr(model, "cached_rope_index", lambda *_: contextlib.nullcontext())
    plain = Defender.from_pretrained(tiny_defender_dir)
    assert cached[0] == cached[1] == plain.generate(images, prompts, **kwargs)
    assert scores == plain.completion_probability(images, prompts, ["1"] * 6, batch_size=4)
