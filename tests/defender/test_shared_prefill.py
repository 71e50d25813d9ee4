"""Sampling n answers with each prompt encoded once (`aot.defender.shared_prefill`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import aot.defender.model as defender_model
import aot.defender.shared_prefill as shared_prefill
from aot.defender import Defender
from aot.defender.shared_prefill import (
    TOKEN_ALIGNED,
    can_share_prefill,
    generate_greedy_and_sampled,
    generate_with_shared_prefill,
    group_representatives,
    sharing_group_prefill,
)

PROMPTS = ["What color is the circle?", "How many stars are there in the image?", "Where?"]


def _inputs(defender: Defender) -> dict[str, torch.Tensor]:
    """A padded batch: prompts of different lengths, images of two sizes."""
    images = [Image.new("RGB", (s, s), c) for s, c in [(112, "red"), (168, "blue"), (112, "green")]]
    texts = [defender.chat_text(p) for p in PROMPTS]
    return dict(defender.processor(images=images, text=texts, padding=True, return_tensors="pt"))


@pytest.mark.parametrize("sample", [True, False])
def test_shared_prefill_gives_the_tokens_of_num_return_sequences(
    tiny_defender_dir: Path, sample: bool
) -> None:
    defender = Defender.from_pretrained(tiny_defender_dir)
    model, inputs = defender.model.eval(), _inputs(defender)
    assert inputs["attention_mask"].eq(0).any()  # left padding is part of the check
    assert can_share_prefill(model, inputs, 3) and not can_share_prefill(model, inputs, 1)
    settings = dict(do_sample=True, top_k=0) if sample else dict(do_sample=False)
    kwargs = dict(max_new_tokens=6, use_cache=True, output_logits=True, **settings)
    kwargs |= dict(return_dict_in_generate=True)
    with torch.inference_mode():
        torch.manual_seed(5)
        if sample:
            plain = model.generate(**inputs, num_return_sequences=3, **kwargs)
            plain_tokens, plain_logits = plain.sequences, torch.stack(plain.logits)
        else:  # generate refuses n > 1 greedy answers: they are the one answer, repeated
            plain = model.generate(**inputs, **kwargs)
            plain_tokens = plain.sequences.repeat_interleave(3, dim=0)
            plain_logits = torch.stack(plain.logits).repeat_interleave(3, dim=1)
        torch.manual_seed(5)
        shared = generate_with_shared_prefill(model, inputs, 3, num_return_sequences=3, **kwargs)
    assert shared.sequences.shape == plain_tokens.shape == (9, inputs["input_ids"].shape[1] + 6)
    assert torch.equal(shared.sequences, plain_tokens)
    # the same distributions at every step, not just the same draws (positions, cache rows)
    torch.testing.assert_close(torch.stack(shared.logits), plain_logits, rtol=1e-4, atol=1e-5)


def test_defender_samples_through_it_and_greedy_after_is_unchanged(
    tiny_defender_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defender = Defender.from_pretrained(tiny_defender_dir)
    images = [Image.new("RGB", (112, 112), c) for c in ("red", "blue", "green")]
    greedy_before = defender.generate(images, PROMPTS, max_new_tokens=5)
    calls: list[int] = []

    def spy(model, inputs, n, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(n)
        return generate_with_shared_prefill(model, inputs, n, **kwargs)

    monkeypatch.setattr(defender_model, "generate_with_shared_prefill", spy)
    sampled = defender.generate(images, PROMPTS, n=4, temperature=1.0, max_new_tokens=5, seed=3)
    assert calls == [4] and [len(a) for a in sampled] == [4, 4, 4]
    # the rope offsets it leaves on the model do not leak into the next call
    assert defender.generate(images, PROMPTS, max_new_tokens=5) == greedy_before


def test_group_prefill_matches_generate_on_repeated_prompts(
    tiny_defender_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL's rollout layout: each prompt repeated side by side, generated in one batch."""
    defender = Defender.from_pretrained(tiny_defender_dir)
    model, inputs = defender.model.eval(), _inputs(defender)
    sizes = inputs["image_grid_thw"].prod(-1).tolist()
    chunks = inputs["pixel_values"].split(sizes)
    repeated = {k: inputs[k].repeat_interleave(4, dim=0) for k in TOKEN_ALIGNED}
    repeated["image_grid_thw"] = inputs["image_grid_thw"].repeat_interleave(4, dim=0)
    repeated["pixel_values"] = torch.cat([c for c in chunks for _ in range(4)])
    firsts = group_representatives(repeated, 4)
    assert firsts is not None and all(torch.equal(firsts[k], inputs[k]) for k in inputs)
    assert group_representatives(repeated, 3) is None  # 12 rows are not runs of 3 alike
    prefilled: list[int] = []

    def spy(model, inputs, n, **kwargs):  # noqa: ANN001, ANN003, ANN202
        prefilled.append(inputs["input_ids"].shape[0])
        return generate_with_shared_prefill(model, inputs, n, **kwargs)

    monkeypatch.setattr(shared_prefill, "generate_with_shared_prefill", spy)
    kwargs = dict(max_new_tokens=6, do_sample=True, top_k=0, use_cache=True)
    with torch.inference_mode():
        torch.manual_seed(11)
        plain = model.generate(**repeated, **kwargs)
        torch.manual_seed(11)
        with sharing_group_prefill(model, 4):
            shared = model.generate(**repeated, **kwargs)
            # a batch that is not made of runs of 4 goes to generate unchanged
            torch.manual_seed(11)
            alike = model.generate(**inputs, **kwargs)
        torch.manual_seed(11)
        alike_plain = model.generate(**inputs, **kwargs)
    assert "generate" not in vars(model)  # unpatched after the block
    assert prefilled == [3]  # the three distinct prompts encoded once, not twelve times
    assert torch.equal(shared, plain)
    assert torch.equal(alike, alike_plain)


def test_greedy_and_sampled_from_one_prefill_match_the_two_calls(tiny_defender_dir: Path) -> None:
    defender = Defender.from_pretrained(tiny_defender_dir)
    model, inputs = defender.model.eval(), _inputs(defender)
    common = dict(max_new_tokens=6, use_cache=True, output_logits=True)
    common |= dict(return_dict_in_generate=True)
    greedy_kwargs = common | dict(do_sample=False)
    sample_kwargs = common | dict(do_sample=True, top_k=0, num_return_sequences=3)
    with torch.inference_mode():
        torch.manual_seed(5)
        plain_greedy = model.generate(**inputs, **greedy_kwargs)
        torch.manual_seed(5)
        plain_sampled = model.generate(**inputs, **sample_kwargs)
        torch.manual_seed(5)
        greedy, sampled = generate_greedy_and_sampled(
            model, inputs, 3, greedy_kwargs=greedy_kwargs, sample_kwargs=sample_kwargs
        )
    assert torch.equal(greedy.sequences, plain_greedy.sequences)
    assert torch.equal(sampled.sequences, plain_sampled.sequences)
    assert sampled.sequences.shape[0] == 9 and greedy.sequences.shape[0] == 3
    torch.testing.assert_close(
        torch.stack(sampled.logits), torch.stack(plain_sampled.logits), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("shared", [True, False])
def test_defender_greedy_first_adds_the_greedy_answer_to_the_same_samples(
    tiny_defender_dir: Path, monkeypatch: pytest.MonkeyPatch, shared: bool
) -> None:
    defender = Defender.from_pretrained(tiny_defender_dir)
    images = [Image.new("RGB", (112, 112), c) for c in ("red", "blue", "green")]
    greedy = defender.generate(images, PROMPTS, max_new_tokens=5)
    sampled = defender.generate(images, PROMPTS, n=2, temperature=1.0, max_new_tokens=5, seed=3)
    if not shared:  # e.g. a model without Qwen2.5-VL's rope offsets: two generate calls
        monkeypatch.setattr(defender_model, "can_share_prefill", lambda *a: False)
    both = defender.generate(
        images, PROMPTS, n=2, temperature=1.0, max_new_tokens=5, seed=3, greedy_first=True
    )
    assert both == [g + s for g, s in zip(greedy, sampled, strict=True)]
    assert len({tuple(a) for a in sampled}) > 1  # the samples are not all one answer
    with pytest.raises(ValueError, match="greedy_first"):
        defender.generate(images, PROMPTS, greedy_first=True)
