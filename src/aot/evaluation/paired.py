"""Paired robustness: how often an edit breaks a question the model answers right when clean.

Accuracy on an attacked suite mixes two things: the questions the model already gets wrong on
the clean image, and the ones the edit breaks. Most edits break nothing, so the second part is a
few rows among hundreds and its differences between models drown in the first part's noise.
Pairing every edited row with the same model's answer to the same question on the clean image
(same protocol) isolates it: the **attack success** is the share of clean-right questions that
are wrong after the edit, as in the self-play rounds' ``attack_success`` metrics.

Each model's pairs are its own clean-right questions, so a model that gets more questions wrong
when clean drops them from its pairs, and the borderline questions an edit tends to break go
first: lower clean accuracy can look like robustness. ``common_attack_success`` compares models
on the same pairs, the questions *every* model answers right when clean.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

PAIRED_COLUMNS = [
    "suite",
    "protocol",
    "family",
    "pairs",
    "fooled",
    "attack_success",
]


def attack_success(
    predictions: pd.DataFrame, clean_suite: str = "clean", pooled: dict[str, str] | None = None
) -> pd.DataFrame:
    """Per suite other than ``clean_suite``, protocol and family (plus ``overall``): the number
    of pairs (rows whose source question the model answers right on ``clean_suite``), how many
    of those it gets wrong (``fooled``) and their share (``attack_success``).

    ``predictions`` needs ``suite``, ``protocol``, ``family``, ``record_id``, ``source_record_id``
    and ``correct``; a row pairs with the clean-suite row whose ``record_id`` is its
    ``source_record_id``. Rows without a clean counterpart are left out. ``pooled`` maps a name
    to a suite prefix (e.g. ``{"attacked_pooled": "attacked_"}``) and adds those suites pooled.
    """
    missing = {"suite", "protocol", "family", "record_id", "source_record_id", "correct"}
    missing -= set(predictions.columns)
    if missing:
        raise ValueError(f"attack_success: predictions lack column(s) {sorted(missing)}")
    clean = predictions[predictions["suite"] == clean_suite]
    if clean.duplicated(["protocol", "record_id"]).any():
        raise ValueError(f"attack_success: duplicate record_id in suite '{clean_suite}'")
    right = clean.set_index(["protocol", "record_id"])["correct"].astype(float)
    edited = predictions[predictions["suite"] != clean_suite]
    keys = pd.MultiIndex.from_arrays([edited["protocol"], edited["source_record_id"]])
    clean_right = right.reindex(keys).to_numpy()
    paired = edited[clean_right == 1.0].assign(fooled=lambda t: t["correct"].astype(float) == 0)
    for name, prefix in (pooled or {}).items():
        group = paired[paired["suite"].str.startswith(prefix)]
        paired = pd.concat([paired, group.assign(suite=name)], ignore_index=True)
    if paired.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    parts = []
    for part in (paired, paired.assign(family="overall")):
        grouped = part.groupby(["suite", "protocol", "family"])["fooled"].agg(["size", "sum"])
        parts.append(grouped.rename(columns={"size": "pairs", "sum": "fooled"}).reset_index())
    out = pd.concat(parts, ignore_index=True)
    out["pairs"] = out["pairs"].astype(int)
    out["fooled"] = out["fooled"].astype(int)
    out["attack_success"] = out["fooled"] / out["pairs"]
    return out[PAIRED_COLUMNS].sort_values(["suite", "protocol", "family"], ignore_index=True)


def common_attack_success(
    predictions: Mapping[str, pd.DataFrame],
    clean_suite: str = "clean",
    pooled: dict[str, str] | None = None,
) -> pd.DataFrame:
    """``attack_success`` per model (a ``model`` column added), each model's pairs restricted,
    per protocol, to the questions every model in ``predictions`` answers right on
    ``clean_suite``: all models are scored on the same pairs (the suites' edited images are
    shared), so a difference is robustness, not a different set of questions."""
    rights = [
        {
            protocol: set(group.loc[group["correct"].astype(bool), "record_id"])
            for protocol, group in table[table["suite"] == clean_suite].groupby("protocol")
        }
        for table in predictions.values()
    ]
    protocols = set().union(*rights)
    # a model without clean answers under a protocol shares no question there
    common = {p: set.intersection(*(r.get(p, set()) for r in rights)) for p in protocols}
    parts = []
    for name, table in predictions.items():
        key = table["record_id"].where(table["suite"] == clean_suite, table["source_record_id"])
        keep = pd.Series(False, index=table.index)
        for protocol, ids in common.items():
            keep |= (table["protocol"] == protocol) & key.isin(ids)
        parts.append(attack_success(table[keep], clean_suite, pooled).assign(model=name))
    if not parts:
        return pd.DataFrame(columns=["model", *PAIRED_COLUMNS])
    return pd.concat(parts, ignore_index=True)[["model", *PAIRED_COLUMNS]]
