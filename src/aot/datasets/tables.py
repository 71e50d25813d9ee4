"""Parquet tables whose Kedro-Viz preview survives list columns, written atomically.

kedro-datasets' `pandas.ParquetDataset.preview` returns list cells (options, boxes) as numpy
arrays, which Kedro-Viz cannot serialise (`kedro viz build --include-previews` fails). This
subclass converts those cells to plain lists, and saves local files through a temporary file
renamed over the target, so a save that fails halfway leaves the previous table intact.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kedro.io.core import DatasetError, get_filepath_str
from kedro_datasets.pandas import ParquetDataset


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class TableDataset(ParquetDataset):
    """`pandas.ParquetDataset` with a JSON-safe preview and atomic local saves."""

    def save(self, data: pd.DataFrame) -> None:
        if self._protocol != "file" or "partition_cols" in self._save_args:
            super().save(data)  # remote stores, and the errors ParquetDataset raises itself
            return
        target = Path(get_filepath_str(self._get_save_path(), self._protocol))
        if target.is_dir():
            raise DatasetError(f"Saving {type(self).__name__} to a directory is not supported.")
        target.parent.mkdir(parents=True, exist_ok=True)
        # A unique sibling name (same filesystem, so the rename is atomic), created by pandas
        # with the usual permissions.
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            data.to_parquet(tmp, **self._save_args)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._invalidate_cache()

    def preview(self, nrows: int = 5) -> dict[str, Any]:  # type: ignore[override]
        split = super().preview(nrows)
        split["data"] = [[_plain(v) for v in row] for row in split["data"]]
        return split
