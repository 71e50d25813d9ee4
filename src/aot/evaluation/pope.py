"""POPE metrics (§6.2): accuracy, precision, recall, F1 with "Yes" as positive, yes-ratio, n.

Input: a prediction table with ``answer_text`` (the Yes/No ground truth), a ``subtype`` (the POPE
category: random / popular / adversarial; comma-joined labels such as ``"random,popular"`` count
for each of their parts, as in the paper's script) and the prediction in ``extracted`` (falling
back to reading ``response`` with ``extract_pope`` when there is no ``extracted`` column).

* The prediction is the *decisive* trial's answer (the ``extracted`` of
  ``aot.evaluation.protocols.answer_table``: the first wrong trial, else the last), as in the
  paper. Anything that is not ``"Yes"`` (``"No"``, None, unparseable) counts as "No".
* ``accuracy`` is the mean of the ``correct`` column when present (the strict multi-trial
  accuracy), else prediction == truth.
* Precision / recall / F1 are 0.0 when undefined (no predicted / no true positives), like
  scikit-learn's ``zero_division=0``, so metrics files never hold NaN.
* ``yes_ratio`` (share of "Yes" predictions) is added here; the paper does not compute it.

Result: ``{"overall": {...}, "<subtype>": {...}}`` each with accuracy, precision, recall, f1,
yes_ratio and n. Rows with an empty subtype only count in "overall".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from aot.evaluation.extraction import extract_pope

YES, NO = "Yes", "No"
POPE_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "yes_ratio", "n")


def pope_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The yes/no rows of a mixed prediction table (answer_text Yes/No, no options)."""
    yes_no = table["answer_text"].isin([YES, NO])
    if "options" in table.columns:
        yes_no &= table["options"].map(lambda o: len(o) == 0)
    return table[yes_no]


def predictions(table: pd.DataFrame) -> pd.Series:
    """``"Yes"`` or ``"No"`` per row from ``extracted`` (else from ``response``)."""
    if "extracted" in table.columns:
        raw = table["extracted"]
    else:
        raw = table["response"].map(extract_pope)
    return raw.map(lambda v: YES if isinstance(v, str) and v.strip() == YES else NO)


def check_truth(table: pd.DataFrame) -> None:
    """Raise a ValueError naming the first row whose ``answer_text`` is not Yes/No."""
    bad = ~table["answer_text"].isin([YES, NO])
    if bad.any():
        position = int(np.flatnonzero(bad.to_numpy())[0])
        row = table.iloc[position]
        name = row["record_id"] if "record_id" in table.columns else f"row {position}"
        raise ValueError(
            f"pope_metrics: {name}: answer_text is {row['answer_text']!r}, expected Yes or No"
        )


def binary_metrics(truth: pd.Series, predicted: pd.Series, correct: pd.Series) -> dict[str, Any]:
    """The POPE metrics of one group (aligned Series)."""
    truth_yes = truth.to_numpy() == YES
    said_yes = predicted.to_numpy() == YES
    tp = int(np.sum(truth_yes & said_yes))
    fp = int(np.sum(~truth_yes & said_yes))
    fn = int(np.sum(truth_yes & ~said_yes))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float(np.mean(correct.to_numpy(dtype=bool))),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "yes_ratio": float(np.mean(said_yes)),
        "n": len(truth),
    }


def subtype_labels(value: Any) -> list[str]:
    """The non-empty parts of a (possibly comma-joined) subtype label."""
    if not isinstance(value, str):
        return []
    return [part.strip() for part in value.split(",") if part.strip()]


def pope_metrics(table: pd.DataFrame, *, subtype_column: str = "subtype") -> dict[str, Any]:
    """POPE metrics overall and per subtype (see the module docstring)."""
    if table.empty:
        raise ValueError("pope_metrics: the prediction table is empty")
    rows = table.reset_index(drop=True)
    check_truth(rows)
    predicted = predictions(rows)
    if "correct" in rows.columns:
        correct = rows["correct"].astype(bool)
    else:
        correct = predicted == rows["answer_text"]
    out = {"overall": binary_metrics(rows["answer_text"], predicted, correct)}
    if subtype_column in rows.columns:
        labels = rows[subtype_column].map(subtype_labels)
        for label in sorted({lab for labs in labels for lab in labs}):
            mask = labels.map(lambda labs, lab=label: lab in labs)
            out[label] = binary_metrics(rows["answer_text"][mask], predicted[mask], correct[mask])
    return out
