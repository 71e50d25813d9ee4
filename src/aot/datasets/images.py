"""A folder of images that may legitimately be empty."""

from __future__ import annotations

from typing import Any

from kedro.io.core import DatasetError
from kedro_datasets.partitions import PartitionedDataset


class ImageFolderDataset(PartitionedDataset):
    """``partitions.PartitionedDataset`` of ``pillow.ImageDataset`` PNGs, where an empty folder
    loads as ``{}`` instead of failing: a self-play round whose Attacker fooled nothing has an
    empty curriculum image set, and the round must go on with replayed clean data."""

    def __init__(self, *, path: str, **kwargs: Any) -> None:
        kwargs.setdefault("dataset", "pillow.ImageDataset")
        kwargs.setdefault("filename_suffix", ".png")
        kwargs.setdefault("overwrite", True)
        super().__init__(path=path, **kwargs)

    def load(self) -> dict[str, Any]:
        try:
            return super().load()
        except DatasetError as error:
            if "No partitions found" in str(error):
                return {}
            raise

    def save(self, data: dict[str, Any]) -> None:
        super().save(data)
        # An empty dict still marks the output as written (for --only-missing-outputs and DVC).
        self._filesystem.makedirs(self._normalized_path, exist_ok=True)

    def _exists(self) -> bool:
        return self._filesystem.isdir(self._normalized_path)
