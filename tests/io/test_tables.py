"""TableDataset: parquet round trip and a Kedro-Viz preview that JSON can serialise."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from aot.datasets import TableDataset


def test_preview_of_list_columns_is_json(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {
            "record_id": ["a", "b"],
            "options": [["red", "blue"], []],
            "target_boxes": [[[1, 2, 3, 4]], []],
        }
    )
    dataset = TableDataset(filepath=str(tmp_path / "t.parquet"))
    dataset.save(table)
    loaded = dataset.load()
    assert list(loaded["options"].iloc[0]) == ["red", "blue"]
    preview = dataset.preview(nrows=2)
    text = json.dumps(preview)  # kedro-datasets' own preview raises here (numpy arrays)
    assert json.loads(text)["data"][0] == ["a", ["red", "blue"], [[1, 2, 3, 4]]]
