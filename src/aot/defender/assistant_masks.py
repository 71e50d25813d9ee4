"""Assistant-token masks without a Python loop over every token (hand-written: transformers'
`ProcessorMixin._adjust_assistant_masks_indices` compares each token's character offsets one
tensor element at a time).

TRL's VLM collator asks the processor's `apply_chat_template` for assistant masks
(`assistant_only_loss`). With the stock method the default pretraining batch (32 conversations)
took 54 to 69 ms to collate, with this one 37 to 43 ms (benchmarks/results/pretrain_step.md).
`vectorised_assistant_masks` swaps in the same computation on whole tensors for the duration of
a `with` block; the masks are equal, element for element (tests/defender/test_assistant_masks.py
compares them with the stock method; every batch of the default pretraining and warm-up came
out the same).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def assistant_masks(
    processed: dict[str, Any], generation_indices: list[list[tuple[int, int]]]
) -> dict[str, Any]:
    """`processed` with `assistant_masks` (one list of 0 / 1 per row) in place of its
    `offset_mapping` and `text_replacement_offsets`: 1 for every token whose characters overlap
    an assistant generation span. Spans are shifted past the image placeholders that the
    processor expanded before them, as transformers does."""
    offset_mapping = processed.pop("offset_mapping")
    input_ids = processed["input_ids"]
    replacements = processed.pop("text_replacement_offsets", None)
    if replacements is None or len(replacements) == 0:
        replacements = [[]] * len(input_ids)
    masks = []
    for row, spans in enumerate(generation_indices):
        offsets = torch.as_tensor(offset_mapping[row], dtype=torch.long).reshape(-1, 2)
        starts, ends = offsets[:, 0], offsets[:, 1]
        mask = torch.zeros(len(input_ids[row]), dtype=torch.bool)
        placeholder_ends = [r["span"][1] for r in replacements[row]]
        gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacements[row]]
        for span in spans:
            start, end = (c + gained[bisect.bisect_right(placeholder_ends, c)] for c in span)
            # zero-width tokens (padding, added specials) never overlap a span
            mask |= (starts < end) & (ends > start)
        masks.append(mask.long().tolist())
    processed["assistant_masks"] = masks
    return processed


@contextmanager
def vectorised_assistant_masks(processor: Any) -> Iterator[None]:
    """Within the block, `processor.apply_chat_template(..., return_assistant_tokens_mask=True)`
    builds its masks with `assistant_masks`. The instance attribute is removed on exit, so the
    processor saves and pickles as before; a processor without the method is left alone."""
    name = "_adjust_assistant_masks_indices"
    if not hasattr(type(processor), name) or name in vars(processor):
        yield
        return
    setattr(processor, name, assistant_masks)  # an instance attribute: called unbound
    try:
        yield
    finally:
        delattr(processor, name)
