"""`ImageFolderDataset` decodes and checks each file once per process and content, and a cached
picture never leaks a change from one caller to another."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from kedro.io import DatasetError
from kedro_datasets.pillow import ImageDataset
from PIL import Image

import aot.datasets.images as images_module
from aot.datasets import ImageFolderDataset
from aot.datasets.images import DECODED


def _noise(side: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The files `pillow.ImageDataset.load` really decodes, in order (the cache starts empty)."""
    seen: list[str] = []
    original = ImageDataset.load

    def counting(self: ImageDataset) -> Image.Image:
        seen.append(Path(str(self._get_load_path())).name)
        return original(self)

    DECODED.clear()
    monkeypatch.setattr(ImageDataset, "load", counting)
    yield seen
    DECODED.clear()


def test_a_folder_loaded_twice_is_decoded_once(tmp_path: Path, decodes: list[str]) -> None:
    dataset = ImageFolderDataset(path=str(tmp_path / "images"))
    dataset.save({"a": _noise(16, 1), "b": _noise(24, 2)})
    first = {k: load() for k, load in dataset.load().items()}
    second = {
        k: load() for k, load in ImageFolderDataset(path=str(tmp_path / "images")).load().items()
    }
    assert sorted(decodes) == ["a.png", "b.png"]
    for key, seed in (("a", 1), ("b", 2)):
        expected = np.asarray(_noise(first[key].width, seed))
        assert np.array_equal(np.asarray(first[key]), expected)
        assert np.array_equal(np.asarray(second[key]), expected)
    first["a"].paste((0, 0, 0), (0, 0, 16, 16))  # a caller drawing on its copy
    third = ImageFolderDataset(path=str(tmp_path / "images")).load()["a"]()
    assert np.array_equal(np.asarray(third), np.asarray(_noise(16, 1)))


def test_a_rewritten_folder_is_decoded_again(tmp_path: Path, decodes: list[str]) -> None:
    dataset = ImageFolderDataset(path=str(tmp_path / "images"))
    dataset.save({"a": _noise(16, 1)})
    assert np.array_equal(np.asarray(dataset.load()["a"]()), np.asarray(_noise(16, 1)))
    dataset.save({"a": _noise(16, 7)})  # same name and size, new pixels
    assert np.array_equal(np.asarray(dataset.load()["a"]()), np.asarray(_noise(16, 7)))
    assert decodes == ["a.png", "a.png"]


def test_no_picture_is_kept_beyond_the_budget(
    tmp_path: Path, decodes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images_module, "DECODED_CACHE_BYTES", 16 * 16 * 3)  # room for "a" only
    dataset = ImageFolderDataset(path=str(tmp_path / "images"))
    dataset.save({"a": _noise(16, 1), "b": _noise(24, 2)})
    for _ in range(2):
        for load in dataset.load().values():
            load()
    assert sorted(decodes) == ["a.png", "b.png", "b.png"]
    assert DECODED.bytes == 16 * 16 * 3


def test_a_file_is_checked_once_per_content(
    tmp_path: Path, decodes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    original = images_module.read_image_size

    def counting(loader: object) -> tuple[int, int]:
        checked.append(Path(str(loader.__self__._get_load_path())).name)  # type: ignore[attr-defined]
        return original(loader)

    monkeypatch.setattr(images_module, "read_image_size", counting)
    dataset = ImageFolderDataset(path=str(tmp_path / "images"))
    dataset.save({"a": _noise(16, 1), "b": _noise(64, 2)})
    dataset.load()
    dataset.load()
    assert sorted(checked) == ["a.png", "b.png"]
    # a file cut short after it was checked has new bytes: checked again, and named
    path = tmp_path / "images" / "b.png"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"b\.png"):
        dataset.load()
    assert sorted(checked) == ["a.png", "b.png", "b.png"]


def test_a_file_rewritten_in_place_with_its_size_and_time_is_decoded_again(
    tmp_path: Path, decodes: list[str]
) -> None:
    """The cache keys files by content: an inode, a size and a modification time can all
    repeat (an in-place write of incompressible pixels, a restored or coarse timestamp)."""
    dataset = ImageFolderDataset(path=str(tmp_path / "images"))
    dataset.save({"a": _noise(16, 1)})
    path = tmp_path / "images" / "a.png"
    before = path.stat()
    assert np.array_equal(np.asarray(dataset.load()["a"]()), np.asarray(_noise(16, 1)))
    with path.open("r+b") as handle:  # same inode
        _noise(16, 7).save(handle, format="PNG")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert np.array_equal(np.asarray(dataset.load()["a"]()), np.asarray(_noise(16, 7)))
    assert decodes == ["a.png", "a.png"]


def test_the_evaluation_keeps_no_second_copy_and_hands_out_copies(
    tmp_path: Path, decodes: list[str]
) -> None:
    """`DecodedImages` keeps the process's decoded picture itself (one copy in memory, not two),
    and what it hands to a reader is a copy, so drawing on it changes nothing shared."""
    from aot.defender.image_cache import BoundedCache
    from aot.evaluation.protocols import DecodedImages, load_picture

    dataset = ImageFolderDataset(path=str(tmp_path / "images"))
    dataset.save({"a": _noise(16, 1)})
    loaders = dataset.load()
    cache = BoundedCache(2**20)
    decoded = DecodedImages(loaders, cache)
    kept = decoded["a"]
    assert kept is next(iter(DECODED.pictures.values())) and cache[("picture", "a")] is kept
    handed = load_picture(decoded, "a")
    assert handed is not kept
    handed.paste((0, 0, 0), (0, 0, 16, 16))
    assert np.array_equal(np.asarray(decoded["a"]), np.asarray(_noise(16, 1)))
    assert np.array_equal(np.asarray(loaders["a"]()), np.asarray(_noise(16, 1)))
    assert decodes == ["a.png"]
