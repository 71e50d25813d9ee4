"""A folder of images that may legitimately be empty, checked on load and replaced atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io.core import DatasetError
from kedro_datasets.partitions import PartitionedDataset

from aot.datasets.model_folder import _recover, atomic_folder
from aot.validation import image_file, read_image_size


class ImageFolderDataset(PartitionedDataset):
    """``partitions.PartitionedDataset`` of ``pillow.ImageDataset`` PNGs, where an empty folder
    loads as ``{}`` instead of failing: a self-play round whose Attacker fooled nothing has an
    empty curriculum image set, and the round must go on with replayed clean data.

    Loading checks that every file decodes (``verify: true``, the default), so a corrupt or
    truncated image fails at once with its file name rather than halfway through a node; the
    images themselves are still loaded lazily. Saving writes a sibling temporary folder and
    swaps it in, so a save that fails leaves the previous images as they were.
    """

    def __init__(self, *, path: str, verify: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("dataset", "pillow.ImageDataset")
        kwargs.setdefault("filename_suffix", ".png")
        kwargs.setdefault("overwrite", True)
        self._verify = verify
        self._init_kwargs = dict(kwargs)
        super().__init__(path=path, **kwargs)

    def _local(self) -> bool:
        return self._protocol in (None, "file")

    def _folder(self) -> Path:
        return Path(self._filesystem._strip_protocol(self._normalized_path))

    def load(self) -> dict[str, Any]:
        if self._local():
            _recover(self._folder())
        try:
            partitions = super().load()
        except DatasetError as error:
            if "No partitions found" in str(error):
                return {}
            raise
        if self._verify:
            self._check(partitions)
        return partitions

    def _check(self, partitions: dict[str, Any]) -> None:
        broken = []
        for key, loader in sorted(partitions.items()):
            try:
                read_image_size(loader)
            except Exception as err:  # noqa: BLE001 - any decoding failure is reported by file
                broken.append(f"  - {image_file(loader) or key}: {type(err).__name__}: {err}")
        if broken:
            raise DatasetError(
                f"ImageFolderDataset({self._path}): {len(broken)} image file(s) are corrupt or "
                "truncated; delete them and rerun the node that writes this folder:\n"
                + "\n".join(broken[:10])
            )

    def save(self, data: dict[str, Any]) -> None:
        if not self._local():
            super().save(data)
            self._filesystem.makedirs(self._normalized_path, exist_ok=True)
            return
        # Written next to the folder and swapped in only once every image was written (lazy
        # values may still read the previous folder meanwhile). An empty dict still leaves a
        # folder, which marks the output as written (for --only-missing-outputs and DVC).
        with atomic_folder(self._folder()) as tmp:
            kwargs = {**self._init_kwargs, "overwrite": False}
            PartitionedDataset(path=str(tmp), **kwargs).save(data)
        self._invalidate_caches()

    def _exists(self) -> bool:
        return self._filesystem.isdir(self._normalized_path)
