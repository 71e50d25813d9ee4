"""`BatchedVisionAttention` gives the library's numbers, forward and backward, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention

from aot.defender import Defender
from aot.defender.vision_attention import BatchedVisionAttention


def _batch(defender: Defender) -> dict[str, torch.Tensor]:
    """Images of three sizes: windows of 4, 8 and 16 merged tokens, in varied orders."""
    rng = np.random.default_rng(0)
    sizes = [112, 168, 224, 112, 168, 112]
    images = [Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for s in sizes]
    texts = [defender.chat_text(f"Is there a red star? {i}") for i in range(len(images))]
    inputs = defender.processor(text=texts, images=images, return_tensors="pt", padding=True)
    inputs["labels"] = inputs["input_ids"].clone()
    return dict(inputs)


def _loss_and_grads(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    model.train().zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    return loss.detach(), torch.cat(grads)


def test_batched_attention_equals_the_librarys(tiny_defender_dir: Path) -> None:
    defender = Defender.from_pretrained(tiny_defender_dir)
    attention = [m for m in defender.model.modules() if isinstance(m, Qwen2_5_VLVisionAttention)]
    assert attention and all(type(m) is BatchedVisionAttention for m in attention)
    plain = AutoModelForImageTextToText.from_pretrained(tiny_defender_dir)
    assert not any(type(m) is BatchedVisionAttention for m in plain.modules())
    batch = _batch(defender)
    grid = batch["image_grid_thw"]
    assert len(set(grid[:, 1].tolist())) == 3  # three image sizes, so chunks of several lengths
    loss, grads = _loss_and_grads(defender.model, batch)
    want_loss, want_grads = _loss_and_grads(plain, batch)
    assert torch.equal(loss, want_loss)
    assert torch.equal(grads, want_grads)
    # a different image would change them: the comparison can fail
    batch["pixel_values"] = batch["pixel_values"].flip(0)
    assert not torch.equal(_loss_and_grads(defender.model, batch)[1], want_grads)


def test_eager_attention_keeps_the_librarys_path(
    tiny_defender_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defender = Defender.from_pretrained(tiny_defender_dir)
    plain = AutoModelForImageTextToText.from_pretrained(tiny_defender_dir)
    for model in (defender.model, plain):
        model.model.visual.config._attn_implementation = "eager"
    batch = _batch(defender)

    def batched_path(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the batched path ran under eager attention")

    import aot.defender.vision_attention as module

    monkeypatch.setattr(module.F, "scaled_dot_product_attention", batched_path)
    with torch.no_grad():
        got = defender.model.model.visual(batch["pixel_values"], batch["image_grid_thw"])
        want = plain.model.visual(batch["pixel_values"], batch["image_grid_thw"])
    assert torch.equal(got.pooler_output, want.pooler_output)


def test_a_saved_defender_is_plain_qwen2_5_vl(tiny_defender_dir: Path, tmp_path: Path) -> None:
    Defender.from_pretrained(tiny_defender_dir).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    original = json.loads((tiny_defender_dir / "config.json").read_text())
    assert (
        saved["architectures"]
        == original["architectures"]
        == ["Qwen2_5_VLForConditionalGeneration"]
    )
    assert "Batched" not in (tmp_path / "config.json").read_text()
