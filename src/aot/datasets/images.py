"""A folder of images that may legitimately be empty, checked on load and replaced atomically,
whose pictures are decoded once per process."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import xxhash
from kedro.io.core import DatasetError, get_filepath_str, get_protocol_and_path
from kedro_datasets.partitions import PartitionedDataset
from kedro_datasets.pillow import ImageDataset
from PIL import Image

from aot.datasets.model_folder import _recover, atomic_folder
from aot.validation import image_file, read_image_size

DECODED_CACHE_BYTES = 512 * 2**20
"""How many bytes of decoded pictures a process keeps (`PictureDataset`); 0 keeps none."""

FileVersion = tuple[str, str]


def file_version(path: str) -> FileVersion | None:
    """(path, a hash of the file's bytes) of a local file, or None when it cannot be read.

    Keyed by content, not by inode and modification time: a folder swapped in by a later save
    can reuse a deleted file's inode, and within the file system's timestamp tick its time too.
    Reading and hashing a PNG costs a small part of decoding or checking it.
    """
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return (path, xxhash.xxh3_128_hexdigest(data))


class _Decoded:
    """Decoded pictures by file version, up to ``DECODED_CACHE_BYTES`` (then no more are kept:
    the evaluation reads the same images in the same order once per Defender, and under that
    pattern keeping the first ones hits where a least-recently-used cache would miss)."""

    def __init__(self) -> None:
        self.pictures: dict[FileVersion, Image.Image] = {}
        self.verified: set[FileVersion] = set()
        self.bytes = 0
        self.lock = threading.Lock()  # Kedro's ThreadRunner may load from several threads

    def get(self, version: FileVersion) -> Image.Image | None:
        return self.pictures.get(version)

    def put(self, version: FileVersion, picture: Image.Image) -> None:
        size = picture.width * picture.height * len(picture.getbands())
        with self.lock:
            if version not in self.pictures and self.bytes + size <= DECODED_CACHE_BYTES:
                self.pictures[version] = picture
                self.bytes += size

    def clear(self) -> None:
        with self.lock:
            self.pictures.clear()
            self.verified.clear()
            self.bytes = 0


DECODED = _Decoded()


class PictureDataset(ImageDataset):
    """``pillow.ImageDataset`` whose local files are decoded once per process and content.

    Hand-written: kedro-datasets caches no decoded images. The evaluation gives every Defender
    the same suite images, each in its own node, and each node's `load` decoded all of them
    again (17,225 PNG decodes, 7.5 s of the default stage under `bench_overhead.py`). A hit
    returns a copy, so a caller that draws on its picture cannot change anyone else's.
    """

    def load(self) -> Image.Image:
        return self.load_shared().copy()

    def load_shared(self) -> Image.Image:
        """The process's decoded picture itself, not a copy: only for a reader that never
        draws on it (`aot.evaluation.protocols.DecodedImages`, which hands out copies)."""
        version = self._decoded_key()
        hit = DECODED.get(version) if version is not None else None
        if hit is None:
            hit = super().load()
            if version is not None:
                DECODED.put(version, hit)
        return hit

    def _decoded_key(self) -> FileVersion | None:
        if self._protocol not in (None, "file") or DECODED_CACHE_BYTES <= 0:
            return None
        return file_version(get_filepath_str(self._get_load_path(), self._protocol))


def _partition_clone(prototype: ImageDataset, filepath: str) -> ImageDataset:
    """``prototype`` for another file: what its class's ``__init__`` would build from the same
    arguments with this ``filepath`` (`tests/io/test_image_partitions.py` compares them)."""
    clone = copy.copy(prototype)
    clone._filepath = PurePosixPath(get_protocol_and_path(filepath, None)[1])
    clone._init_args = _with_filepath(prototype._init_args, filepath)
    return clone


def _with_filepath(init_args: dict[str, Any], filepath: str) -> dict[str, Any]:
    # Kedro records a subclass without its own __init__ as {"args": ..., "kwargs": {...}}.
    out = dict(init_args)
    if "filepath" in out:
        out["filepath"] = filepath
    if isinstance(out.get("kwargs"), dict) and "filepath" in out["kwargs"]:
        out["kwargs"] = {**out["kwargs"], "filepath": filepath}
    return out


class ImageFolderDataset(PartitionedDataset):
    """``partitions.PartitionedDataset`` of ``pillow.ImageDataset`` PNGs, where an empty folder
    loads as ``{}`` instead of failing (unless ``allow_empty`` is false): a self-play round whose
    Attacker fooled nothing has an empty curriculum image set, and the round must go on with
    replayed clean data.

    Loading checks that every file decodes (``verify: true``, the default), so a corrupt or
    truncated image fails at once with its file name rather than halfway through a node; the
    images themselves are still loaded lazily, through `PictureDataset`. A file whose bytes were
    already checked in this process is not checked again. Saving writes a sibling temporary
    folder and swaps it in, so a save that fails leaves the previous images as they were.

    Loading a local folder builds one partition's dataset through its class and copies it for
    the others (hand-written: kedro-datasets builds every partition through ``__init__``, whose
    argument capture, filesystem lookup and config copy made a load of 2,400 to 3,000 images
    take 0.18 to 0.38 s, against 0.05 to 0.08 s with copies, in every node that reads them;
    `benchmarks/results/overhead_base.md`).
    """

    def __init__(
        self, *, path: str, verify: bool = True, allow_empty: bool = True, **kwargs: Any
    ) -> None:
        kwargs.setdefault("dataset", "aot.datasets.images.PictureDataset")
        kwargs.setdefault("filename_suffix", ".png")
        kwargs.setdefault("overwrite", True)
        self._verify = verify
        self._allow_empty = allow_empty
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
            partitions = self._load_partitions()
        except DatasetError as error:
            if self._allow_empty and "No partitions found" in str(error):
                return {}
            raise
        if self._verify:
            self._check(partitions)
        return partitions

    def _load_partitions(self) -> dict[str, Callable[[], Any]]:
        if not self._local() or not issubclass(self._dataset_type, ImageDataset):
            return super().load()
        self._invalidate_caches()
        paths = self._list_partitions()
        if not paths:
            raise DatasetError(f"No partitions found in '{self._path}'")
        first, *rest = paths
        config = {
            **copy.deepcopy(self._dataset_config),
            self._filepath_arg: self._join_protocol(first),
        }
        prototype = self._dataset_type(**config)
        datasets = [prototype] + [_partition_clone(prototype, self._join_protocol(p)) for p in rest]
        return {self._path_to_partition(p): d.load for p, d in zip(paths, datasets, strict=True)}

    def _check(self, partitions: dict[str, Any]) -> None:
        broken = []
        for key, loader in sorted(partitions.items()):
            path = image_file(loader)
            version = file_version(path) if path is not None else None
            if version is not None and version in DECODED.verified:
                continue  # these very bytes were read to the end by an earlier load
            try:
                read_image_size(loader)
            except Exception as err:  # noqa: BLE001 - any decoding failure is reported by file
                broken.append(f"  - {path or key}: {type(err).__name__}: {err}")
                continue
            if version is not None:
                with DECODED.lock:
                    DECODED.verified.add(version)
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
