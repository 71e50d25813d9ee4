"""The per-step image cache gives the processor's own patches and runs it once per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from aot.defender.image_cache import cached_preprocessing, image_key


def _images(n: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


@pytest.fixture
def processor(tiny_defender_dir: Path):  # noqa: ANN201
    return AutoProcessor.from_pretrained(tiny_defender_dir)


def test_cached_patches_equal_the_processors_own(processor) -> None:  # noqa: ANN001
    distinct = _images(3, 112, 0) + _images(2, 168, 1)
    # a rollout batch: every image repeated (num_generations copies), sizes mixed
    batch = [distinct[i] for i in (0, 0, 3, 1, 3, 2, 4, 0, 4)]
    nested = [[image] for image in batch]  # how the processor gets one image per conversation
    reference = processor.image_processor(batch, return_tensors="pt")
    cache: dict = {}
    with cached_preprocessing(processor.image_processor, cache):
        flat = processor.image_processor(batch, return_tensors="pt")
        again = processor.image_processor(nested, return_tensors="pt")
    for got in (flat, again):
        assert torch.equal(got["pixel_values"], reference["pixel_values"])
        assert torch.equal(got["image_grid_thw"], reference["image_grid_thw"])
    assert len(cache) == 5


def test_each_distinct_image_is_processed_once(processor, monkeypatch) -> None:  # noqa: ANN001
    calls: list[int] = []
    original = type(processor.image_processor).preprocess

    def counting(self, images, **kwargs):  # noqa: ANN001, ANN202
        calls.append(len(images))
        return original(self, images, **kwargs)

    monkeypatch.setattr(type(processor.image_processor), "preprocess", counting)
    images = _images(2, 112, 2)
    with cached_preprocessing(processor.image_processor, {}):
        processor.image_processor(images * 5, return_tensors="pt")
        processor.image_processor(images[::-1] * 5, return_tensors="pt")
    assert calls == [1, 1]
    # a copy with the same pixels is the same image; one pixel changed is not
    copy, changed = images[0].copy(), images[0].copy()
    changed.putpixel((0, 0), (1, 2, 3) if changed.getpixel((0, 0)) != (1, 2, 3) else (4, 5, 6))
    assert image_key(copy) == image_key(images[0]) != image_key(changed)


def test_the_processor_is_left_as_it_was(processor, tmp_path: Path) -> None:  # noqa: ANN001
    image_processor = processor.image_processor
    array = np.zeros((112, 112, 3), dtype=np.uint8)
    cache: dict = {}
    with cached_preprocessing(image_processor, cache):
        # anything but PIL images goes to the processor unchanged, and is not cached
        out = image_processor([array], return_tensors="pt")
        assert out["pixel_values"].shape[0] == int(out["image_grid_thw"].prod())
    assert cache == {}
    assert "preprocess" not in vars(image_processor)
    processor.save_pretrained(tmp_path)  # still serialisable, and loads back the same
    reloaded = AutoProcessor.from_pretrained(tmp_path).image_processor
    assert reloaded.to_dict() == image_processor.to_dict()
