"""Suite summaries, DVC-friendly flat metric keys, and multi-seed aggregation.

Metric key scheme (``flatten_metrics``): the path of nested dictionary keys joined by ``/``,
behind an optional prefix::

    <model>/<suite>/<metric>/<group>[/<sub-metric>]

* ``model``: the evaluated Defender, e.g. ``base``, ``aot_round_3``, ``clean_ablation``;
* ``suite``: the evaluation set, e.g. ``clean``, ``attacked_round_2``, ``unseen_blur``,
  ``pope``, ``vstar``, ``hrbench_4k``, ``hallusionbench``;
* ``metric``/``group``: from the summary, e.g. ``accuracy/attribute``, ``accuracy/overall``,
  ``parsed/count``, ``n/overall``, ``pope/adversarial/f1``, ``aAcc/overall``;
* multi-seed tables (``aggregate_seeds``) append ``mean``, ``std`` or ``n``.

Examples: ``aot_round_3/attacked_round_2/accuracy/attribute``,
``aot_round_3/clean/pope/random/precision``, ``base/vstar/accuracy/overall/mean``.
Key parts are sanitised (``/`` becomes ``-``, whitespace ``_``) so a category name such as
``"VD/figure"`` cannot add a level. Keys come out sorted, values as plain ``int``/``float``;
None and non-finite numbers are dropped so ``json.dump`` writes strict JSON for DVC.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from aot.evaluation.pope import pope_metrics, pope_rows
from aot.metrics import accuracy_by_family

_SPACE = re.compile(r"\s+")


def summarize(predictions: pd.DataFrame) -> dict[str, Any]:
    """Accuracy, parse rate and counts per family and ``overall`` (``accuracy_by_family``).

    Adds ``"pope"`` (``pope_metrics`` of the yes/no rows) when the table has yes/no rows with
    a non-empty ``subtype``, i.e. the world's existence questions or the POPE benchmark.
    """
    summary = accuracy_by_family(predictions)
    if "answer_text" in predictions.columns and "subtype" in predictions.columns:
        yes_no = pope_rows(predictions)
        if not yes_no.empty and (yes_no["subtype"].astype(str).str.strip() != "").any():
            summary["pope"] = pope_metrics(yes_no)
    return summary


def key_part(value: Any) -> str:
    """One sanitised key level: no ``/``, no whitespace runs."""
    return _SPACE.sub("_", str(value).strip()).replace("/", "-")


def plain_number(value: Any) -> int | float | None:
    """``value`` as a JSON number (bools become 0/1), or None when it is not a finite number."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and math.isfinite(float(value)):
        return float(value)
    return None


def flatten_metrics(nested: Mapping[str, Any], prefix: str = "") -> dict[str, int | float]:
    """``{"a": {"b": 1}}`` -> ``{"<prefix>/a/b": 1}``, sorted (see the module's key scheme).

    ``prefix`` may itself contain ``/`` (e.g. ``"aot_round_3/clean"``); its parts are kept.
    """
    parts = [key_part(p) for p in prefix.split("/") if p.strip()] if prefix else []
    flat: dict[str, int | float] = {}
    collect(nested, parts, flat)
    return dict(sorted(flat.items()))


def as_flat(metrics: Mapping[str, Any]) -> dict[str, int | float]:
    """``metrics`` with flat ``a/b/c`` keys, whether it came nested, flat (a metrics.json) or
    mixed; flat keys are kept as they are (``flatten_metrics`` alone would sanitise their ``/``).
    """
    flat: dict[str, int | float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=str(key)))
            continue
        number = plain_number(value)
        if number is not None:
            flat[str(key)] = number
    return dict(sorted(flat.items()))


def collect(value: Any, path: list[str], flat: dict[str, int | float]) -> None:
    """Depth-first walk of ``value`` writing numeric leaves into ``flat``."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            collect(inner, [*path, key_part(key)], flat)
        return
    number = plain_number(value)
    if number is not None and path:
        flat["/".join(path)] = number


def mean_and_spread(values_by_seed: Mapping[Any, float] | Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` over seeds; ``std`` is the sample std (ddof=1), 0.0 for n=1.

    Non-finite values are ignored; ValueError when no finite value is left.
    """
    raw = values_by_seed.values() if isinstance(values_by_seed, Mapping) else values_by_seed
    values = np.array([float(v) for v in raw], dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("mean_and_spread: no finite value")
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "n": int(values.size)}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b": v}`` -> ``{"a": {"b": v}}`` (the inverse of ``flatten_metrics``'s joining)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def aggregate_seeds(metrics_by_seed: Mapping[Any, Mapping[str, Any]]) -> dict[str, Any]:
    """Per metric, ``mean_and_spread`` across seeds, nested like the input.

    Each seed's metrics may be nested or flat; a metric missing for some seeds is aggregated
    over the seeds that have it. ``flatten_metrics`` of the result gives keys ending in
    ``/mean``, ``/std`` and ``/n``.
    """
    flat_by_seed = [as_flat(m) for m in metrics_by_seed.values()]
    keys = sorted({k for flat in flat_by_seed for k in flat})
    return unflatten({k: mean_and_spread([f[k] for f in flat_by_seed if k in f]) for k in keys})
