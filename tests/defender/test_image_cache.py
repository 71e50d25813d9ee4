"""The image caches give the processor's own patches and the model's own features, and run each
once per distinct image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from aot.defender import Defender
from aot.defender.image_cache import (
    BoundedCache,
    cached_image_features,
    cached_preprocessing,
    image_key,
    nbytes,
    vision_owner,
)
from aot.evaluation.protocols import DecodedImages


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


def test_a_bounded_cache_declines_entries_once_full() -> None:
    cache = BoundedCache(max_bytes=1000)
    cache["a"] = torch.zeros(100, dtype=torch.float32)  # 400 bytes
    cache["b"] = (torch.zeros(50, dtype=torch.float32), torch.zeros(10, dtype=torch.int64))
    cache["c"] = torch.zeros(100, dtype=torch.float32)  # would make 1080: declined
    cache["d"] = Image.new("RGB", (5, 5))  # 75 bytes: still fits
    assert list(cache) == ["a", "b", "d"]
    assert cache.bytes == 400 + 280 + 75 == sum(nbytes(v) for v in cache.values())
    cache["a"] = torch.zeros(1)  # an existing key is not replaced or counted twice
    assert cache["a"].numel() == 100 and cache.bytes == 755
    with pytest.raises(ValueError, match="max_bytes"):
        BoundedCache(-1)


@pytest.fixture
def defender(tiny_defender_dir: Path) -> Defender:
    return Defender.from_pretrained(tiny_defender_dir)


def _features(defender: Defender, images: list[Image.Image]) -> tuple[torch.Tensor, ...]:
    inputs = defender.processor.image_processor(images, return_tensors="pt")
    with torch.inference_mode():
        out = defender.model.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
        )
    return tuple(out.pooler_output)


def test_cached_features_equal_the_models_own(defender: Defender, count_vision_calls) -> None:  # noqa: ANN001
    distinct = _images(3, 112, 3) + _images(1, 168, 4)
    batch = [distinct[i] for i in (0, 3, 0, 1, 2, 3, 1)]
    reference = _features(defender, batch)
    calls = count_vision_calls(defender)
    cache: dict = {}
    with cached_image_features(defender.model, cache):
        first = _features(defender, batch)
        second = _features(defender, batch[::-1])
    assert calls == [4]  # the 4 distinct images, once; the second call is all hits
    assert len(cache) == 4
    for got, want in zip(first + second[::-1], reference + reference, strict=True):
        assert torch.equal(got, want)
    assert "get_image_features" not in vars(vision_owner(defender.model))


def test_features_are_not_cached_while_recording_gradients(defender: Defender) -> None:
    images = _images(2, 112, 5)
    inputs = defender.processor.image_processor(images, return_tensors="pt")
    cache: dict = {}
    with cached_image_features(defender.model, cache):
        out = defender.model.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
        )
    assert cache == {}
    assert out.pooler_output[0].requires_grad  # the training forward still backpropagates


def test_a_frozen_towers_features_are_cached_while_recording_gradients(
    defender: Defender, count_vision_calls
) -> None:  # noqa: ANN001
    """No gradient can reach a frozen tower, so its features are kept even in a training
    forward; ``on_features`` gets the whole call's merged tokens, hits included."""
    images = _images(2, 112, 7) + _images(1, 168, 8)
    reference = _features(defender, images)
    for p in defender.model.model.visual.parameters():
        p.requires_grad_(False)
    inputs = defender.processor.image_processor(images, return_tensors="pt")
    calls = count_vision_calls(defender)
    seen: list[torch.Tensor] = []
    with cached_image_features(defender.model, {}, seen.append):
        for _ in range(2):
            out = defender.model.model.get_image_features(
                inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
            )
    assert torch.is_grad_enabled() and calls == [3]
    for got in (out.pooler_output, *[t.split([16, 16, 36]) for t in seen]):
        assert all(torch.equal(a, b) for a, b in zip(got, reference, strict=True))
    assert len(seen) == 2 and not seen[1].requires_grad


def test_cache_blocks_nest(defender: Defender) -> None:
    owner = vision_owner(defender.model)
    with cached_image_features(defender.model, {}):
        outer = vars(owner)["get_image_features"]
        with cached_image_features(defender.model, {}):
            assert vars(owner)["get_image_features"] is not outer
        assert vars(owner)["get_image_features"] is outer  # the inner block restored it
    assert "get_image_features" not in vars(owner)


def test_generate_answers_the_same_with_a_shared_cache(defender: Defender) -> None:
    images = _images(4, 112, 6) * 2
    prompts = [f"What colour is object {i}?" for i in range(8)]
    plain = defender.generate(images, prompts, max_new_tokens=4, batch_size=3)
    cache = BoundedCache(2**20)
    with defender.reusing_images(cache):
        first = defender.generate(images, prompts, max_new_tokens=4, batch_size=3)
        again = defender.generate(images, prompts, max_new_tokens=4, batch_size=3)
    assert plain == first == again
    assert len(cache) == 4  # the features of the 4 distinct images, and no patches
    assert defender._image_cache is None


def test_decoded_images_load_each_picture_once() -> None:
    loads: list[str] = []

    def lazy(key: str, colour: tuple[int, int, int]):  # noqa: ANN202
        def load() -> Image.Image:
            loads.append(key)
            return Image.new("RGB", (4, 4), colour)

        return load

    images = {"a": lazy("a", (1, 2, 3)), "b": lazy("b", (4, 5, 6))}
    decoded = DecodedImages(images, BoundedCache(48))  # room for one 4x4 RGB picture
    assert decoded["a"].getpixel((0, 0)) == (1, 2, 3)
    assert decoded["a"].getpixel((0, 0)) == (1, 2, 3)
    decoded["b"], decoded["b"]
    assert loads == ["a", "b", "b"]  # "a" was kept; "b" did not fit
    assert "a" in decoded and "c" not in decoded and len(decoded) == 2
    with pytest.raises(KeyError, match="'c'"):
        decoded["c"]


def test_generate_encodes_an_image_a_batch_holds_twice_once(
    defender: Defender,
    count_vision_calls,  # noqa: ANN001
) -> None:
    images = _images(2, 112, 8)
    batch = [images[0], images[1], images[0]]
    prompts = ["What colour is it?", "How many?", "Is there a star?"]
    plain = [
        defender.generate([im], [q], max_new_tokens=4)[0]
        for im, q in zip(batch, prompts, strict=True)
    ]
    calls = count_vision_calls(defender)
    assert defender.generate(batch, prompts, max_new_tokens=4, batch_size=3) == plain
    assert calls == [2]  # one batch, its 2 distinct images
