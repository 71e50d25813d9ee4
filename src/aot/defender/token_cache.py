"""Tokenize each distinct text once and pad the cached ids (hand-written: transformers'
tokenizers keep no cache of encodings).

The Defender's processor expands each image placeholder to the image's patch count and
tokenizes the expanded text on every call. The evaluation asks a few hundred distinct questions
of images of one size, so nearly every text it tokenizes was tokenized before: 637 tokenizer
calls took 4.5 s of the default evaluation stage under `bench_overhead.py --functions`. The
Attacker's reward scores each edit's answer teacher-forced (`Defender.completion_probability`),
which tokenized each edit's text and prompt one at a time. Inside `cached_tokenization` a call
for a list of texts encodes only the texts it has not seen (unpadded, through the tokenizer
itself) and pads the cached ids with the tokenizer's own `pad` (to the longest text, on its
padding side, with its pad id and a zero attention mask; 2.4 ms for 32 rows, as long as padding
them by hand). A fast tokenizer encodes each text of a batch on its own, so the outputs are the
tokenizer's own; calls with other options (truncation, a fixed length) go to the tokenizer
unchanged. A fast tokenizer also keeps the last call's padding in its backend, and
`save_pretrained` writes it into tokenizer.json: a call served here sets that state as the
tokenizer's own call would (without it, the warm-up's saved `defender_sft` lost its `padding`
entry, since its last calls were all served from the cache).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from functools import cache
from typing import Any

from transformers import BatchEncoding

# The keyword arguments a processor passes with values that this cache reproduces; any other
# argument, or another value (truncation, a fixed length, other outputs), goes to the tokenizer.
ALLOWED = {
    "padding": (False, True, "longest"),
    "return_tensors": (None, "pt"),
    "padding_side": (None, "left", "right"),
    "pad_to_multiple_of": (None,),
    "max_length": (None,),
    "truncation": (None, False),
}
FIELDS = ("input_ids", "attention_mask")


def cacheable(tokenizer: Any, args: tuple, kwargs: dict[str, Any]) -> bool:
    """Whether a call ``tokenizer(*args, **kwargs)`` is a batch of texts this cache serves."""
    if len(args) > 1:  # a text pair, or other options by position
        return False
    texts = args[0] if args else kwargs.get("text")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return False
    options = {k: v for k, v in kwargs.items() if k != "text"}
    if any(k not in ALLOWED or v not in ALLOWED[k] for k, v in options.items()):
        return False
    if not options.get("padding"):
        # unpadded rows of different lengths make no tensor: left to the tokenizer's error
        return options.get("return_tensors") is None
    return tokenizer.pad_token_id is not None


class LimitedCache(dict):
    """A dict that stops taking new entries once it holds ``max_entries`` (no eviction: the
    texts a pipeline asks about do not change over its run)."""

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        if max_entries < 0:
            raise ValueError(f"LimitedCache: max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries

    def __setitem__(self, key: Any, value: Any) -> None:
        if key in self or len(self) < self.max_entries:
            super().__setitem__(key, value)


def set_backend_state(tokenizer: Any, kwargs: dict[str, Any]) -> None:
    """Leave a fast tokenizer's backend set to a call's padding and truncation, as the call
    itself would: the tokenizer keeps that state after each call and `save_pretrained` writes it
    into tokenizer.json, so a tokenizer saved after cached calls is the one saved after plain
    calls. (Private transformers methods; a tokenizer without them has no such state.)"""
    if not hasattr(tokenizer, "set_truncation_and_padding"):
        return
    padding, truncation, max_length, _ = tokenizer._get_padding_truncation_strategies(
        padding=kwargs.get("padding", False),
        truncation=kwargs.get("truncation"),
        max_length=kwargs.get("max_length"),
        pad_to_multiple_of=kwargs.get("pad_to_multiple_of"),
        verbose=False,
    )
    tokenizer.set_truncation_and_padding(
        padding_strategy=padding,
        truncation_strategy=truncation,
        max_length=max_length,
        stride=0,
        pad_to_multiple_of=kwargs.get("pad_to_multiple_of"),
        padding_side=kwargs.get("padding_side"),
    )


def call_with_cache(
    call: Any, tokenizer: Any, cache_: MutableMapping[str, dict], args: tuple, kwargs: dict
) -> BatchEncoding:
    """``call(tokenizer, *args, **kwargs)``, served from ``cache_`` where `cacheable`."""
    if not cacheable(tokenizer, args, kwargs):
        return call(tokenizer, *args, **kwargs)
    texts = args[0] if args else kwargs["text"]
    new = list(dict.fromkeys(t for t in texts if t not in cache_))
    found = {t: cache_[t] for t in texts if t in cache_}
    if new:
        encoded = call(tokenizer, new)  # unpadded lists, one row per text
        if set(encoded.keys()) != set(FIELDS):  # another tokenizer's outputs: not reproduced
            return call(tokenizer, *args, **kwargs)
        for row, text in enumerate(new):
            found[text] = {k: encoded[k][row] for k in FIELDS}
            cache_[text] = found[text]  # a bounded cache may decline it
    # copies: the caller may edit its rows, and `pad` keeps a row that needs no padding
    rows = {k: [list(found[t][k]) for t in texts] for k in FIELDS}
    set_backend_state(tokenizer, kwargs)
    if not kwargs.get("padding"):
        return BatchEncoding(rows)
    return tokenizer.pad(
        rows,
        padding=kwargs["padding"],
        padding_side=kwargs.get("padding_side"),
        return_tensors=kwargs.get("return_tensors"),
    )


@cache
def _cached_subclass(cls: type) -> type:
    def __call__(self: Any, *args: Any, **kwargs: Any) -> BatchEncoding:
        return call_with_cache(cls.__call__, self, self._aot_token_cache, args, kwargs)

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})


@contextmanager
def cached_tokenization(tokenizer: Any, cache_: MutableMapping[str, dict]) -> Iterator[None]:
    """Within the block, ``tokenizer([texts], padding=True, ...)`` encodes only the texts not in
    ``cache_`` and pads the cached rows. Python looks ``__call__`` up on the type, so the
    tokenizer gets a subclass for the block and its own class back on exit (it saves and pickles
    as before). Blocks nest: an inner block's cache serves its calls."""
    original, previous = type(tokenizer), tokenizer.__dict__.get("_aot_token_cache")
    if previous is None:
        tokenizer.__class__ = _cached_subclass(original)
    tokenizer._aot_token_cache = cache_
    try:
        yield
    finally:
        if previous is None:
            del tokenizer._aot_token_cache
            tokenizer.__class__ = original
        else:
            tokenizer._aot_token_cache = previous
