"""Evaluation metrics as pure functions over prediction tables."""

from __future__ import annotations

from typing import Any

import pandas as pd


def accuracy_by_family(predictions: pd.DataFrame) -> dict[str, Any]:
    """`{"accuracy": {family: acc, "overall": acc}, "parsed": {...}, "n": {...}}` from a table
    with `family`, `correct` and `extracted` columns."""
    if predictions.empty:
        raise ValueError("accuracy_by_family: the prediction table is empty")
    grouped = predictions.groupby("family")
    accuracy = {str(k): float(v) for k, v in grouped["correct"].mean().items()}
    accuracy["overall"] = float(predictions["correct"].mean())
    parsed = {
        str(k): float(v) for k, v in grouped["extracted"].apply(lambda s: s.notna().mean()).items()
    }
    parsed["overall"] = float(predictions["extracted"].notna().mean())
    counts = {str(k): int(v) for k, v in grouped.size().items()}
    counts["overall"] = len(predictions)
    return {"accuracy": accuracy, "parsed": parsed, "n": counts}
