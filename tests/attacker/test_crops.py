"""Crops and paste-back: an edit touches pixels inside its box and nowhere else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aot.attacker import BoxEditPipeline, crop_window, paste_back, to_crops

BOXES = [(0, 0, 16, 16), (96, 96, 112, 112), (0, 90, 30, 112), (40, 41, 62, 63), (0, 0, 112, 112)]


@pytest.mark.parametrize("box", BOXES + [(5, 0, 9, 80)])
def test_crop_window_is_square_inside_and_contains_box(box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = crop_window(box, 112, 112, 1.5)
    assert x1 - x0 == y1 - y0
    assert 0 <= x0 and 0 <= y0 and x1 <= 112 and y1 <= 112
    assert x0 <= box[0] and y0 <= box[1] and box[2] <= x1 and box[3] <= y1


def test_crop_window_scale() -> None:
    assert crop_window((40, 40, 60, 60), 112, 112, 1.5) == (35, 35, 65, 65)


def test_to_crops_shapes_and_mask() -> None:
    images = torch.rand(len(BOXES), 3, 112, 112) * 2 - 1
    src, mask, windows = to_crops(images, BOXES, crop_size=32, crop_scale=1.5)
    assert src.shape == (len(BOXES), 3, 32, 32) and mask.shape == (len(BOXES), 1, 32, 32)
    assert windows.shape == (len(BOXES), 4)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask[-1].all()  # the whole image is the box
    frac = mask[3].mean().item()  # 22 px box in a 33 px window
    assert 0.4 < frac < 0.6


def test_to_crops_uint8_equals_float() -> None:
    img = torch.randint(0, 256, (3, 112, 112), dtype=torch.uint8)
    a, _, _ = to_crops([img], [(10, 20, 40, 50)])
    b, _, _ = to_crops([img.float() / 127.5 - 1], [(10, 20, 40, 50)])
    torch.testing.assert_close(a, b)


def test_paste_back_changes_only_the_box() -> None:
    images = torch.rand(len(BOXES), 3, 112, 112) * 2 - 1
    _, _, windows = to_crops(images, BOXES)
    out = paste_back(images, torch.full((len(BOXES), 3, 32, 32), 0.5), windows, BOXES)
    for img, new, (x0, y0, x1, y1) in zip(images, out, BOXES, strict=True):
        inside = torch.zeros(112, 112, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(new[:, ~inside], img[:, ~inside])
        torch.testing.assert_close(new[:, inside], torch.full_like(new[:, inside], 0.5))


@pytest.mark.parametrize("bad", [(-1, 0, 10, 10), (0, 0, 113, 10), (5, 5, 5, 9), (1, 2, 3)])
def test_bad_boxes_are_rejected(bad: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="box"):
        to_crops(torch.zeros(1, 3, 112, 112), [bad])


def test_pipeline_edits_only_inside_box(tiny_pipe: BoxEditPipeline, image: Image.Image) -> None:
    gen = torch.Generator().manual_seed(0)
    prompts = ["a red star", "remove the object", "blue circle", "green cross", "yellow hexagon"]
    out = tiny_pipe([image] * len(BOXES), BOXES, prompts, num_inference_steps=2, generator=gen)
    src = np.array(image)
    for edited, (x0, y0, x1, y1) in zip(out, BOXES, strict=True):
        assert edited.size == image.size and edited.mode == "RGB"
        new = np.array(edited)
        inside = np.zeros(src.shape[:2], dtype=bool)
        inside[y0:y1, x0:x1] = True
        assert np.array_equal(new[~inside], src[~inside])
        assert (new[inside] != src[inside]).any()  # random weights: the box did change


def test_pipeline_non_square_image(tiny_pipe: BoxEditPipeline) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    box = (70, 40, 90, 60)
    out = tiny_pipe(image, box, "purple square", num_inference_steps=2)[0]
    assert out.size == (90, 60)
    a, b = np.array(image), np.array(out)
    a[40:60, 70:90] = b[40:60, 70:90] = 0
    assert np.array_equal(a, b)


def test_paste_back_uint8_images() -> None:
    img = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8)
    src, _, windows = to_crops(img, [(5, 5, 20, 20)])
    out = paste_back(img, torch.ones_like(src), windows, [(5, 5, 20, 20)])
    assert out.dtype == torch.uint8 and (out[0, :, 5:20, 5:20] == 255).all()
    out[0, :, 5:20, 5:20] = img[0, :, 5:20, 5:20]
    assert torch.equal(out, img)
