"""The effectiveness filter and the paired (clean, edited) table of the AOT-SFT dataset.

A distractor is kept as "effective" when the Defender answers the clean image correctly and the
edited one wrongly. Both are measured as fractions of ``k`` sampled answers, so "consecutive
failures" (all K wrong, the §3.5 reading) is ``edited_max=0`` and a graded variant is a
threshold change. Any object with ``Defender.generate``'s signature works as the Defender.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pandas as pd

from aot.rewards.answer import PromptMode, PromptStyle, correct_first_reward, make_prompt
from aot.world import RECORD_COLUMNS

logger = logging.getLogger(__name__)

PAIR_EXTRA_COLUMNS: tuple[str, ...] = (
    "split",
    "clean_record_id",
    "edited_image",
    "edit_kind",
    "distractor_box",
    "distractor_prompt",
    "strategy",
    "clean_correct_rate",
    "edited_correct_rate",
    "effective",
)
PAIR_COLUMNS: tuple[str, ...] = (*RECORD_COLUMNS, *PAIR_EXTRA_COLUMNS)


class Answerer(Protocol):
    """What the filter needs from a Defender."""

    def generate(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        *,
        n: int,
        temperature: float,
        max_new_tokens: int,
        batch_size: int,
        seed: int | None,
    ) -> list[list[str]]: ...


def _load(images: Mapping[str, Any], key: str) -> Any:
    loaded = images[key]
    return loaded() if callable(loaded) else loaded


def correct_rate(answers: Sequence[str], row: Mapping[str, Any], mode: PromptMode) -> float:
    """Fraction of answers the correct-first reward scores as correct (any format)."""
    if not answers:
        return 0.0
    options = list(row["options"])
    text = row["answer_text"] if options else None
    hits = [
        correct_first_reward(a, row["answer"], options, mode, text).accuracy > 0 for a in answers
    ]
    return sum(hits) / len(hits)


def _answer(
    defender: Answerer,
    images: Sequence[Any],
    rows: Sequence[Mapping[str, Any]],
    settings: dict[str, Any],
    mode: PromptMode,
    style: PromptStyle = "protocol",
) -> list[list[str]]:
    if not rows:
        return []
    prompts = [make_prompt(r["question"], list(r["options"]), style, mode) for r in rows]
    return defender.generate(list(images), prompts, **settings)


def effectiveness(
    defender: Answerer,
    clean_images: Mapping[str, Any],
    edited_images: Mapping[str, Any],
    records: pd.DataFrame,
    k: int = 3,
    temperature: float = 1.0,
    mode: PromptMode = "letter",
    batch_size: int = 16,
    seed: int | None = 0,
    *,
    clean_min: float = 1.0,
    edited_max: float = 0.0,
    max_new_tokens: int = 16,
    prompt_style: PromptStyle = "protocol",
) -> pd.DataFrame:
    """Per candidate pair (same index as ``records``): correct rates over ``k`` answers, the
    answers themselves and ``effective = clean_rate >= clean_min & edited_rate <= edited_max``.

    ``records`` needs ``record_id``, ``image`` and ``edited_image`` plus the question fields;
    ``prompt_style`` must be the one the Defender was trained on (`short` for the tiny default's
    base Defender, `protocol` for an instruction-tuned checkpoint).
    each clean record (``clean_record_id`` when present) is answered once, however many
    distractors it has.
    """
    if k > 1 and temperature <= 0:
        raise ValueError(f"effectiveness: k={k} samples need temperature > 0 (greedy repeats)")
    settings = dict(
        n=k,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
    )
    clean_id = "clean_record_id" if "clean_record_id" in records.columns else "record_id"
    clean_rows = records.drop_duplicates(clean_id).to_dict("records")
    clean_answers = _answer(
        defender,
        [_load(clean_images, r["image"]) for r in clean_rows],
        clean_rows,
        settings,
        mode,
        prompt_style,
    )
    by_record = {r[clean_id]: a for r, a in zip(clean_rows, clean_answers, strict=True)}
    rows = records.to_dict("records")
    edited_answers = _answer(
        defender,
        [_load(edited_images, r["edited_image"]) for r in rows],
        rows,
        settings,
        mode,
        prompt_style,
    )
    out = pd.DataFrame(index=records.index)
    out["clean_answers"] = [list(by_record[r[clean_id]]) for r in rows]
    out["edited_answers"] = [list(a) for a in edited_answers]
    out["clean_correct_rate"] = [
        correct_rate(a, r, mode) for a, r in zip(out["clean_answers"], rows, strict=True)
    ]
    out["edited_correct_rate"] = [
        correct_rate(a, r, mode) for a, r in zip(edited_answers, rows, strict=True)
    ]
    out["effective"] = (out["clean_correct_rate"] >= clean_min) & (
        out["edited_correct_rate"] <= edited_max
    )
    logger.info(
        "Effectiveness: %d of %d distractors effective (clean acc %.2f, edited acc %.2f)",
        int(out["effective"].sum()),
        len(out),
        out["clean_correct_rate"].mean(),
        out["edited_correct_rate"].mean(),
    )
    return out


def build_pairs(
    candidates: pd.DataFrame, effect: pd.DataFrame, effective_only: bool = False
) -> pd.DataFrame:
    """The paired table: ``PAIR_COLUMNS`` first (record schema of the clean extended record,
    ``split``, distractor fields, rates, ``effective``), then any other candidate column.

    ``split`` is the source scene's, carried through unchanged, so no scene crosses splits.
    """
    missing = [c for c in PAIR_COLUMNS if c not in candidates.columns and c not in effect.columns]
    if missing:
        raise ValueError(f"build_pairs: missing column(s) {missing}")
    table = candidates.join(effect[[c for c in effect.columns if c not in candidates.columns]])
    if effective_only:
        table = table[table["effective"]]
    rest = [c for c in table.columns if c not in PAIR_COLUMNS]
    return table[[*PAIR_COLUMNS, *rest]].reset_index(drop=True)


def summarize_pairs(pairs: pd.DataFrame) -> dict[str, Any]:
    """Yield of the filter overall, per family and per strategy (for metrics and logs)."""
    if pairs.empty:
        return {"n_pairs": 0, "effective_rate": float("nan")}
    return {
        "n_pairs": len(pairs),
        "effective_rate": float(pairs["effective"].mean()),
        "by_family": pairs.groupby("family")["effective"].mean().round(4).to_dict(),
        "by_strategy": pairs.groupby("strategy")["effective"].mean().round(4).to_dict(),
    }
