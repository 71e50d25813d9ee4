"""A tokenizer call inside `cached_tokenization` gives the tokenizer's own outputs while
encoding each text once."""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from aot.defender import Defender
from aot.defender.token_cache import LimitedCache, cached_tokenization

PROMPTS = ["How many red discs are there?", "Is there a ring?", "Which shape is left of the star?"]


@pytest.fixture
def processor(tiny_defender_dir: Path):  # noqa: ANN201
    return AutoProcessor.from_pretrained(tiny_defender_dir)


def _texts(processor, prompts: list[str]) -> list[str]:  # noqa: ANN001
    """Chat texts with the image placeholder expanded, as the processor tokenizes them."""
    out = []
    for prompt in prompts:
        content = [{"type": "text", "text": prompt}, {"type": "image"}]
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )
        out.append(text.replace("<|image_pad|>", "<|image_pad|>" * 9))
    return out


def _counting(tokenizer, monkeypatch) -> list[list[str]]:  # noqa: ANN001
    """The texts of each call that reaches the tokenizer's own `__call__`."""
    calls: list[list[str]] = []
    original = type(tokenizer).__call__

    def counting(self, text=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(list(text) if isinstance(text, list) else [text])
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counting)
    return calls


def _same(a, b) -> bool:  # noqa: ANN001
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": True, "return_tensors": "pt", "padding_side": "left"},
        {"padding": True, "return_tensors": "pt", "padding_side": "right"},
        {"padding": "longest"},
        {},
    ],
    ids=["left tensors", "right tensors", "padded lists", "unpadded lists"],
)
def test_outputs_equal_the_tokenizers_own_with_each_text_encoded_once(
    processor, monkeypatch: pytest.MonkeyPatch, kwargs: dict
) -> None:
    tokenizer = processor.tokenizer
    short, middle, long_ = _texts(processor, PROMPTS)
    first, second = [long_, short, long_], [middle, short, middle, long_]
    expected = [tokenizer(batch, **kwargs) for batch in (first, second)]
    calls = _counting(tokenizer, monkeypatch)
    cache: dict = {}
    with cached_tokenization(tokenizer, cache):
        got = [tokenizer(batch, **kwargs) for batch in (first, second)]
    assert all(_same(e, g) for e, g in zip(expected, got, strict=True))
    # each distinct text reached the tokenizer once, across both calls
    assert calls == [[long_, short], [middle]]
    assert set(cache) == {short, middle, long_}


def test_calls_it_does_not_reproduce_go_to_the_tokenizer(
    processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = processor.tokenizer
    texts = _texts(processor, PROMPTS)
    truncated = tokenizer(texts, padding=True, truncation=True, max_length=12)
    single = tokenizer(texts[0])
    pairs = tokenizer(texts, texts, padding=True)
    calls = _counting(tokenizer, monkeypatch)
    cache: dict = {}
    with cached_tokenization(tokenizer, cache):
        assert _same(tokenizer(texts, padding=True, truncation=True, max_length=12), truncated)
        assert _same(tokenizer(texts[0]), single)
        assert _same(tokenizer(texts, texts, padding=True), pairs)
    # the truncated call, the single text (not a batch) and the pairs went to the tokenizer whole
    assert calls == [texts, [texts[0]], texts] and not cache


@pytest.mark.parametrize("kwargs", [{}, {"padding": True}], ids=["unpadded", "padded lists"])
def test_edits_to_returned_rows_leave_the_cache_alone(processor, kwargs: dict) -> None:
    tokenizer = processor.tokenizer
    texts = _texts(processor, PROMPTS[:1])
    with cached_tokenization(tokenizer, {}):
        first = tokenizer(texts, **kwargs)  # one text: a padded row needs no padding
        first["input_ids"][0].append(-1)
        first["attention_mask"][0].append(-1)
        again = tokenizer(texts, **kwargs)
        assert -1 not in again["input_ids"][0] and -1 not in again["attention_mask"][0]


def test_the_tokenizer_gets_its_class_back_even_on_an_exception(processor) -> None:
    tokenizer = processor.tokenizer
    own = type(tokenizer)
    outer: dict = {}
    with pytest.raises(RuntimeError), cached_tokenization(tokenizer, outer):
        with cached_tokenization(tokenizer, inner := {}):
            tokenizer(_texts(processor, PROMPTS[:1]), padding=True)
        assert len(inner) == 1 and not outer  # the inner block's cache served its call
        raise RuntimeError("boom")
    assert type(tokenizer) is own and "_aot_token_cache" not in vars(tokenizer)
    pickle.dumps(tokenizer)  # saves and pickles as before


def test_limited_cache_stops_taking_entries_when_full() -> None:
    cache = LimitedCache(2)
    for key in "abc":
        cache[key] = key
    cache["a"] = "again"
    assert cache == {"a": "again", "b": "b"}
    with pytest.raises(ValueError, match="max_entries"):
        LimitedCache(-1)


def test_defender_answers_the_same_and_tokenizes_each_text_once(
    tiny_defender_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aot.defender.model as model

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(6)]
    prompts = [PROMPTS[i % 2] for i in range(6)]
    defender = Defender.from_pretrained(tiny_defender_dir)
    calls = _counting(defender.processor.tokenizer, monkeypatch)
    kwargs = dict(n=3, temperature=1.0, seed=0, batch_size=4, greedy_first=True)
    cached = [defender.generate(images, prompts, **kwargs) for _ in range(2)]
    assert [len(c) for c in calls] == [2]  # two distinct texts, encoded in the first batch only
    monkeypatch.setattr(model, "cached_tokenization", lambda *_: contextlib.nullcontext())
    plain = Defender.from_pretrained(tiny_defender_dir).generate(images, prompts, **kwargs)
    assert cached[0] == cached[1] == plain


def test_completion_probability_is_the_same_and_tokenizes_each_text_once(
    tiny_defender_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aot.defender.model as model

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(6)]
    prompts, answers = [PROMPTS[0]] * 6, ["1", "2", "1", "2", "1", "2"]
    defender = Defender.from_pretrained(tiny_defender_dir)
    calls = _counting(defender.processor.tokenizer, monkeypatch)
    cached = defender.completion_probability(images, prompts, answers, batch_size=4)
    again = defender.completion_probability(images, prompts, answers, batch_size=4)
    # the first batch: the two (prompt, answer) texts, then the prompt; the image-expanded
    # texts for the processor; nothing new after that
    assert [len(c) for c in calls] == [2, 1, 2]
    monkeypatch.setattr(model, "cached_tokenization", lambda *_: contextlib.nullcontext())
    plain = Defender.from_pretrained(tiny_defender_dir).completion_probability(
        images, prompts, answers, batch_size=4
    )
    assert cached == again == plain


def test_a_tokenizer_saved_after_cached_calls_is_the_one_saved_after_plain_calls(
    tiny_defender_dir: Path, tmp_path: Path
) -> None:
    """A fast tokenizer keeps the last call's padding in its backend and `save_pretrained`
    writes it into tokenizer.json; calls served from the cache set it the same way."""
    calls = [
        {"padding": True, "return_tensors": "pt", "padding_side": "left"},
        {},
        {"padding": True, "return_tensors": "pt", "padding_side": "left"},
    ]

    def run(cached: bool, folder: Path) -> list:
        tokenizer = AutoProcessor.from_pretrained(tiny_defender_dir).tokenizer
        texts = _texts(AutoProcessor.from_pretrained(tiny_defender_dir), PROMPTS[:2])
        states = []
        block = cached_tokenization(tokenizer, {}) if cached else contextlib.nullcontext()
        with block:
            for kwargs in calls:  # the last call is served from the cache alone
                tokenizer(texts, **kwargs)
                states.append(tokenizer.backend_tokenizer.padding)
        tokenizer.save_pretrained(folder)
        return states

    plain = run(False, tmp_path / "plain")
    assert plain[-1] is not None and plain[1] is None  # the state does change between calls
    assert run(True, tmp_path / "cached") == plain
    files = ("tokenizer.json", "tokenizer_config.json")
    assert all(
        (tmp_path / "plain" / f).read_bytes() == (tmp_path / "cached" / f).read_bytes()
        for f in files
    )
