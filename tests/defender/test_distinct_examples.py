"""A processor call inside `processing_distinct_examples_once` gives the processor's own outputs
while processing each distinct (text, images) example once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from aot.defender.distinct_examples import (
    call_per_distinct_example,
    example_images,
    processing_distinct_examples_once,
)


@pytest.fixture
def processor(tiny_defender_dir: Path):  # noqa: ANN201
    return AutoProcessor.from_pretrained(tiny_defender_dir)


def _images(sizes: list[int], seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for s in sizes]


def _text(processor, prompt: str) -> str:  # noqa: ANN001
    content = [{"type": "image"}, {"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def _equal(a, b) -> bool:  # noqa: ANN001
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def _counting(processor, monkeypatch) -> list[int]:  # noqa: ANN001
    """The number of texts in each call that reaches the processor's own `__call__`."""
    texts: list[int] = []
    original = type(processor).__call__

    def counting(self, images=None, text=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202, E501
        texts.append(len(text) if isinstance(text, list) else 1)
        return original(self, images, text, *args, **kwargs)

    monkeypatch.setattr(type(processor), "__call__", counting)
    return texts


@pytest.mark.parametrize(
    "kwargs", [{"padding": True, "return_tensors": "pt"}, {}], ids=["padded tensors", "lists"]
)
def test_outputs_equal_the_processors_own_with_each_example_once(
    processor,
    monkeypatch,
    kwargs,  # noqa: ANN001
) -> None:
    images = _images([112, 168, 168], 0)
    texts = [_text(processor, p) for p in ("What is left?", "How many red things are there?")]
    # a rollout batch: groups of copies; the last two share a text but not an image
    pairs = [(0, 0), (0, 0), (0, 0), (1, 1), (1, 1), (1, 1), (1, 2), (1, 2), (0, 0)]
    call = {"images": [[images[i]] for _, i in pairs], "text": [texts[t] for t, _ in pairs]}
    reference = processor(**call, **kwargs)
    texts_seen = _counting(processor, monkeypatch)
    with processing_distinct_examples_once(processor):
        got = processor(**call, **kwargs)
    assert texts_seen == [3]  # (0, 0), (1, 1), (1, 2)
    assert set(got.keys()) == set(reference.keys())
    assert {"input_ids", "pixel_values", "image_grid_thw"} <= set(got.keys())
    for key in reference:
        assert _equal(reference[key], got[key]), key


def test_chat_template_tokenizing_goes_through_it(processor, monkeypatch) -> None:  # noqa: ANN001
    """TRL tokenizes rollout prompts with `apply_chat_template(..., tokenize=True)`, which calls
    the processor on the whole batch of conversations."""
    images = _images([168, 112], 1)
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": images[i]}, *text]}]
        for i, text in [(0, [{"type": "text", "text": "Where?"}])] * 4
        + [(1, [{"type": "text", "text": "Which?"}])] * 4
    ]
    options = dict(add_generation_prompt=True, tokenize=True, return_dict=True)
    reference = processor.apply_chat_template(conversations, **options)
    texts_seen = _counting(processor, monkeypatch)
    with processing_distinct_examples_once(processor):
        got = processor.apply_chat_template(conversations, **options)
    assert texts_seen == [2]
    assert set(got.keys()) == set(reference.keys())
    for key in reference:
        assert _equal(reference[key], got[key]), key


def test_repeated_rows_are_copies(processor) -> None:  # noqa: ANN001
    image = _images([112], 2)[0]
    text = _text(processor, "Is it round?")
    with processing_distinct_examples_once(processor):
        out = processor(images=[[image], [image]], text=[text, text])
    first, second = out["input_ids"]
    assert first == second
    first.append(-1)  # a caller padding one row in place leaves the other as it was
    assert second[-1] != -1


def test_calls_it_cannot_split_go_through_unchanged(processor, monkeypatch) -> None:  # noqa: ANN001
    images = _images([112, 112], 3)
    text = _text(processor, "Is it round?")
    texts_seen = _counting(processor, monkeypatch)
    with processing_distinct_examples_once(processor):
        processor(images=[[images[0]], [images[1]]], text=[text, text])  # distinct images
        processor(images=[images[0]], text=text)  # one text
        processor(text=[text.replace("<|image_pad|>", ""), "plain"])  # no images
        processor([[images[0]], [images[0]]], [text, text], None)  # videos given by position
    assert texts_seen == [2, 1, 2, 2]


def test_the_processor_gets_its_class_back(processor, tmp_path: Path) -> None:  # noqa: ANN001
    cls = type(processor)
    with processing_distinct_examples_once(processor):
        assert isinstance(processor, cls) and type(processor) is not cls
        with processing_distinct_examples_once(processor):  # nested blocks
            pass
        assert type(processor) is not cls
    assert type(processor) is cls
    with pytest.raises(RuntimeError), processing_distinct_examples_once(processor):
        raise RuntimeError("a failing rollout")
    assert type(processor) is cls
    processor.save_pretrained(tmp_path)
    assert type(AutoProcessor.from_pretrained(tmp_path)) is cls


def test_example_images_reads_one_image_list_per_text() -> None:
    a, b = _images([56, 56], 4)
    assert example_images([[a], [a, b]], 2) == [(a,), (a, b)]
    assert example_images([a, b], 2) == [(a,), (b,)]
    assert example_images([a], 2) is None  # not one entry per text
    assert example_images([[[a]]], 1) is None  # nested deeper than a list per text
    assert example_images(a, 1) is None
    assert example_images([[a], None], 2) is None  # a text without an image
    assert example_images([[a], []], 2) is None


def test_unknown_outputs_fall_back_to_the_whole_call() -> None:
    calls: list[int] = []

    def call(_processor, images, text, **_):  # noqa: ANN001, ANN003, ANN202
        calls.append(len(text))
        return {"input_ids": [[1]] * len(text), "pixel_values": torch.zeros(len(text), 2),
                "image_grid_thw": torch.ones(len(text), 3, dtype=torch.long),
                "some_new_field": [0] * len(text)}  # fmt: skip

    image = _images([56], 5)[0]
    out = call_per_distinct_example(call, None, images=[[image]] * 3, text=["t"] * 3)
    assert calls == [1, 3]  # tried the distinct example, then gave the call to the processor
    assert len(out["some_new_field"]) == 3
