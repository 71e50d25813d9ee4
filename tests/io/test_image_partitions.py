"""`ImageFolderDataset` builds one partition's dataset and copies it for the rest: each copy
must be what kedro-datasets' `PartitionedDataset` builds for that file, and load that file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kedro.io import DatasetError
from kedro_datasets.partitions import PartitionedDataset
from PIL import Image

from aot.datasets import ImageFolderDataset


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
