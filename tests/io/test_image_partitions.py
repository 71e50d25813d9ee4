"""`ImageFolderDataset` builds one partition's dataset and copies it for the rest: each copy
must be what kedro-datasets' `PartitionedDataset` builds for that file, and load that file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kedro.io import DatasetError
from kedro_datasets.partitions import PartitionedDataset
from PIL import Image

from aot.datasets import ImageFolderDataset

ROOT = Path(__file__).resolve().parents[2]


def _picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))


def _state(loader: Any) -> dict[str, Any]:
    return dict(vars(loader.__self__))


@pytest.mark.parametrize("dataset", ["pillow.ImageDataset", "aot.datasets.images.PictureDataset"])
def test_partitions_match_kedro_datasets_own(tmp_path: Path, dataset: str) -> None:
    folder = tmp_path / "images"
    pictures = {f"{group}/{i:02d}": _picture(i) for group in ("a", "b") for i in range(5)}
    options = {"dataset": {"type": dataset, "save_args": {"compress_level": 3}}}
    ImageFolderDataset(path=str(folder), **options).save(pictures)

    ours = ImageFolderDataset(path=str(folder), **options).load()
    theirs = PartitionedDataset(path=str(folder), filename_suffix=".png", **options).load()

    assert sorted(ours) == sorted(theirs) == sorted(pictures)
    for key, loader in ours.items():
        assert type(loader.__self__) is type(theirs[key].__self__)
        assert _state(loader) == _state(theirs[key]), key
        assert np.array_equal(np.asarray(loader()), np.asarray(pictures[key]))
    # every partition is its own object (its cached load and save versions are its own)
    owners = {id(loader.__self__) for loader in ours.values()}
    assert len(owners) == len(ours)


def test_allow_empty_false_fails_on_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    assert ImageFolderDataset(path=str(tmp_path / "images")).load() == {}
    with pytest.raises(DatasetError, match="No partitions found"):
        ImageFolderDataset(path=str(tmp_path / "images"), allow_empty=False).load()


def _zlib_level_class(png: Path) -> int:
    """FLEVEL of the PNG's zlib stream (RFC 1950): 0 fastest (level 0-1), 1 fast (2-5),
    2 default (6), 3 maximum (7-9)."""
    data = png.read_bytes()
    start = data.index(b"IDAT") + 4
    return data[start + 1] >> 6


def test_the_evaluation_folders_write_fast_pngs_of_the_same_pixels(tmp_path: Path) -> None:
    """The evaluation's suite and attacked images are saved at zlib level 1 (the catalog's
    `save_args`): the same pixels as Pillow's default, written faster, in larger files."""
    catalog = yaml.safe_load((ROOT / "conf/base/catalog.yml").read_text())
    entries = [catalog["evaluation_suite_images"], catalog["evaluation_attacked_images_{attacker}"]]
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    pictures = {f"{i:02d}": Image.fromarray(np.dstack([ramp + i] * 3)) for i in range(4)}
    ImageFolderDataset(path=str(tmp_path / "default")).save(pictures)
    for n, entry in enumerate(entries):
        folder = tmp_path / f"catalog_{n}"
        ImageFolderDataset(path=str(folder), dataset=entry["dataset"]).save(pictures)
        for key, picture in pictures.items():
            fast, default = folder / f"{key}.png", tmp_path / "default" / f"{key}.png"
            assert np.array_equal(np.asarray(Image.open(fast)), np.asarray(picture))
            assert (_zlib_level_class(fast), _zlib_level_class(default)) == (0, 2)
            assert fast.stat().st_size > default.stat().st_size
