"""Unseen manipulations: target pixels kept (or boxes remapped exactly), reproducible, visible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aot.evaluation.unseen import (
    UNSEEN_MANIPULATIONS,
    BoxMap,
    apply_unseen,
    colour_dependent,
    colour_shift,
    crop,
    dilate,
    guard_margin,
    rescale_pad,
)

PIXEL_KEEPING = ("occlude_grey", "occlude_noise", "colour_shift", "blur", "jpeg")
BOXES = [[5, 5, 20, 20], [40, 30, 55, 50]]
SPATIAL = {"family": "spatial", "question": "Where is the star relative to the cross?"}


def noise_image(seed: int = 0, size: tuple[int, int] = (64, 56)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def region(image: Image.Image, box: list[int]) -> np.ndarray:
    return np.asarray(image)[box[1] : box[3], box[0] : box[2]]


@pytest.mark.parametrize("name", PIXEL_KEEPING)
def test_pixel_manipulations_keep_target_pixels_and_change_the_rest(name: str) -> None:
    image = noise_image()
    before = np.asarray(image).copy()
    record = {**SPATIAL, "target_boxes": BOXES}
    out = UNSEEN_MANIPULATIONS[name](image, record, np.random.default_rng(3))
    assert out.image.size == image.size and out.boxes == BoxMap.identity(*image.size)
    for box in BOXES:
        assert np.array_equal(region(out.image, box), region(image, box))
    assert not np.array_equal(np.asarray(out.image), before)
    assert np.array_equal(np.asarray(image), before)  # the input is not mutated


@pytest.mark.parametrize("name", list(UNSEEN_MANIPULATIONS))
def test_reproducible_by_seed(name: str) -> None:
    record = {**SPATIAL, "target_boxes": BOXES}
    runs = [
        UNSEEN_MANIPULATIONS[name](noise_image(), record, np.random.default_rng(s))
        for s in (5, 5, 6)
    ]
    assert np.array_equal(np.asarray(runs[0].image), np.asarray(runs[1].image))
    assert runs[0].boxes == runs[1].boxes
    differs = runs[0].image.size != runs[2].image.size or not np.array_equal(
        np.asarray(runs[0].image), np.asarray(runs[2].image)
    )
    assert differs


@pytest.mark.parametrize("name", ["occlude_grey", "occlude_noise"])
def test_occluders_stay_outside_the_dilated_boxes(name: str) -> None:
    image = noise_image(1)
    size = image.size
    for seed in range(5):
        out = UNSEEN_MANIPULATIONS[name](
            image, {"target_boxes": BOXES}, np.random.default_rng(seed)
        )
        for box in BOXES:
            guard = list(dilate(tuple(box), guard_margin(size), size))
            assert np.array_equal(region(out.image, guard), region(image, guard))


def test_crop_keeps_every_box_and_shifts_it_exactly() -> None:
    image = noise_image(2)
    for seed in range(6):
        out = crop(image, {"target_boxes": BOXES}, np.random.default_rng(seed))
        assert out.image.size[0] < image.size[0] or out.image.size[1] < image.size[1]
        assert (out.boxes.width, out.boxes.height) == out.image.size
        for box in BOXES:
            moved = out.boxes.map_box(box)
            assert moved[2] - moved[0] == box[2] - box[0] and moved[3] - moved[1] == box[3] - box[1]
            assert np.array_equal(region(out.image, moved), region(image, box))


def red_bbox(image: Image.Image) -> list[int]:
    """Tight box of the pixels influenced by the red object (red clearly above green)."""
    arr = np.asarray(image).astype(int)
    ys, xs = np.nonzero(arr[..., 0] - arr[..., 1] > 8)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_rescale_pad_maps_boxes_onto_the_object() -> None:
    arr = np.full((48, 64, 3), 128, dtype=np.uint8)
    box = [13, 11, 31, 29]
    arr[box[1] : box[3], box[0] : box[2]] = (220, 30, 30)
    image = Image.fromarray(arr, "RGB")
    for seed in range(8):
        out = rescale_pad(image, {"target_boxes": [box]}, np.random.default_rng(seed))
        assert out.image.size == image.size
        mapped, seen = out.boxes.map_box(box), red_bbox(out.image)
        assert mapped[0] <= seen[0] and mapped[1] <= seen[1]
        assert seen[2] <= mapped[2] and seen[3] <= mapped[3]
        assert max(abs(a - b) for a, b in zip(mapped, seen, strict=True)) <= 2
        assert seen[2] - seen[0] < box[2] - box[0]  # the object did shrink


def hue(image: Image.Image, xy: tuple[int, int]) -> int:
    return image.convert("HSV").getpixel(xy)[0]


def test_colour_shift_rotates_hue_only_when_colour_does_not_matter() -> None:
    image = Image.new("RGB", (40, 40), (200, 100, 0))  # orange
    rng = np.random.default_rng
    free = colour_shift(image, {**SPATIAL, "target_boxes": [[0, 0, 10, 10]]}, rng(0))
    turned = abs(hue(free.image, (30, 30)) - hue(image, (30, 30)))
    assert min(turned, 256 - turned) >= 6  # >= ~8 degrees: the hue was rotated
    coloured = {"family": "attribute", "question": "What color is it?", "target_boxes": []}
    for seed in range(4):
        kept = colour_shift(image, coloured, rng(seed))
        assert abs(hue(kept.image, (30, 30)) - hue(image, (30, 30))) <= 2
        assert kept.image.getpixel((30, 30)) != image.getpixel((30, 30))


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"family": "attribute", "question": "What is it?"}, True),
        ({"family": "count", "spec": '{"family": "count", "filter": {"color": "red"}}'}, True),
        ({"family": "count", "spec": '{"family": "count", "filter": {"shape": "star"}}'}, False),
        ({"family": "spatial", "question": "Where is the red circle relative to the star?"}, True),
        ({"family": "spatial", "question": "Where is the circle relative to the star?"}, False),
        ({"family": "attribute", "colour_dependent": False}, False),
    ],
)
def test_colour_dependent(record: dict, expected: bool) -> None:
    assert colour_dependent(record) is expected


def test_apply_unseen_keys_rows_and_protection(records: pd.DataFrame, images: dict) -> None:
    names = ["occlude_noise", "crop", "blur"]
    table, out = apply_unseen(records, images, names, seed=4)
    assert sorted(out) == sorted(f"{k}-{n}" for k in ("s0", "s1") for n in names)
    assert len(table) == len(records) * len(names)
    assert table["manipulation"].tolist() == [n for n in names for _ in range(len(records))]
    assert table["record_id"].iloc[len(records)] == "s0-attribute-0-crop"
    sources = {"s0": images["s0"], "s1": images["s1"]()}
    for row in table.to_dict("records"):
        original = records.set_index("record_id").loc[row["record_id"].rsplit("-", 1)[0]]
        assert row["image"] == f"{row['source_image']}-{row['manipulation']}"
        for old, new in zip(original["target_boxes"], row["target_boxes"], strict=True):
            assert np.array_equal(
                region(out[row["image"]], new), region(sources[row["source_image"]], old)
            )


def test_apply_unseen_is_deterministic_and_validates(records: pd.DataFrame, images: dict) -> None:
    _, first = apply_unseen(records, images, ["jpeg", "rescale_pad"], seed=1)
    _, again = apply_unseen(records, images, ["rescale_pad", "jpeg"], seed=1)
    _, other = apply_unseen(records, images, ["jpeg", "rescale_pad"], seed=2)
    for key in first:
        assert np.array_equal(np.asarray(first[key]), np.asarray(again[key]))
    assert any(not np.array_equal(np.asarray(first[k]), np.asarray(other[k])) for k in first)
    with pytest.raises(ValueError, match="swirl"):
        apply_unseen(records, images, ["swirl"])
    with pytest.raises(ValueError, match="target_boxes"):
        apply_unseen(records.drop(columns="target_boxes"), images, ["blur"])
