"""Parquet tables whose Kedro-Viz preview survives list columns.

kedro-datasets' `pandas.ParquetDataset.preview` returns list cells (options, boxes) as numpy
arrays, which Kedro-Viz cannot serialise (`kedro viz build --include-previews` fails). This
subclass only converts those cells to plain lists; loading and saving are unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
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
    """`pandas.ParquetDataset` with a JSON-safe preview."""

    def preview(self, nrows: int = 5) -> dict[str, Any]:  # type: ignore[override]
        split = super().preview(nrows)
        split["data"] = [[_plain(v) for v in row] for row in split["data"]]
        return split
