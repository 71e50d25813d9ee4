"""The vectorised assistant masks equal transformers' own, and the collator uses them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aot.defender import Defender
from aot.defender.assistant_masks import vectorised_assistant_masks
from aot.defender.examples import graphs_from_table, world_examples
from aot.defender.sft import DenseCollator
from aot.pipelines.bootstrap_dataset.nodes import generate_source_scenes

WORLD = {"image_size": 112, "min_objects": 2, "max_objects": 3, "backgrounds": {"plain": 1.0}}


@pytest.fixture(scope="module")
def conversations() -> list:
    scenes, records, images = generate_source_scenes(WORLD, {"n_scenes": 6}, seed=3)
    graphs = graphs_from_table(scenes)
    one_turn = world_examples(records, images, graphs, turns=1, mode="word")
    three_turns = world_examples(records, images, graphs, turns=3, mode="word")
    return [*one_turn[:5], *three_turns[:5]]  # rows of different lengths: right padding too


def _masks(processor, examples, truncate: int | None = None) -> torch.Tensor:  # noqa: ANN001
    out = processor.apply_chat_template(
        [e.messages() for e in examples],
        images=[[e.image] for e in examples],
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        return_assistant_tokens_mask=True,
        processor_kwargs={
            "padding": True,
            "padding_side": "right",
            "truncation": truncate is not None,
            "max_length": truncate,
            "add_special_tokens": False,
        },
    )
    return out["assistant_masks"]


def test_masks_equal_the_stock_ones(tiny_defender_dir: Path, conversations: list) -> None:
    processor = Defender.from_pretrained(tiny_defender_dir).processor
    stock = _masks(processor, conversations)
    assert 0 < int(stock.sum()) < stock.numel()  # answers kept, prompts and padding masked
    # truncated in the middle of the later answers: spans cut short or cut away
    length = int(stock.shape[1] * 0.8)
    stock_cut = _masks(processor, conversations, truncate=length)
    with vectorised_assistant_masks(processor):
        assert torch.equal(_masks(processor, conversations), stock)
        assert torch.equal(_masks(processor, conversations, truncate=length), stock_cut)
    assert "_adjust_assistant_masks_indices" not in vars(processor)  # restored on exit


def test_collator_batches_are_unchanged(tiny_defender_dir: Path, conversations: list) -> None:
    processor = Defender.from_pretrained(tiny_defender_dir).processor

    def rows() -> list[dict]:
        return [
            {"images": [e.image], "messages": e.messages(), "dense": e.dense.reshape(-1).tolist()}
            for e in conversations
        ]

    fast = DenseCollator(processor=processor, assistant_only_loss=True)(rows())
    stock_method = type(processor)._adjust_assistant_masks_indices
    calls = []

    def counting(self, *args):  # noqa: ANN001, ANN002, ANN202
        calls.append(1)
        return stock_method(self, *args)

    processor._adjust_assistant_masks_indices = counting.__get__(processor)
    try:  # an instance attribute already set: the collator leaves it alone, so this is stock
        stock = DenseCollator(processor=processor, assistant_only_loss=True)(rows())
    finally:
        del processor._adjust_assistant_masks_indices
    assert calls and fast.keys() == stock.keys()
    for key in stock:
        assert torch.equal(fast[key], stock[key]), key
