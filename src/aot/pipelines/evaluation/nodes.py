"""Nodes of evaluation: per-family accuracy of a Defender on held-out clean scenes, and the
per-family robustness over self-play rounds (a tidy table and its figure)."""

from __future__ import annotations

import logging
import re
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from aot.defender import Defender
from aot.defender.examples import load_image
from aot.metrics import accuracy_by_family
from aot.rewards import correct_first_reward, make_prompt
from aot.world import FAMILIES

logger = logging.getLogger(__name__)


def answer_records(
    defender: Defender, records: pd.DataFrame, images: dict[str, Any], evaluation: dict[str, Any]
) -> pd.DataFrame:
    """Greedy answers of `defender` to the records of `evaluation.split`, scored by the protocol."""
    split = evaluation.get("split", "test")
    mode = evaluation.get("answer_mode", "letter")
    subset = records[records["split"] == split] if "split" in records else records
    if subset.empty:
        raise ValueError(f"evaluation: no records in split '{split}'")
    per_family = evaluation.get("max_per_family")
    if per_family:  # balanced: the source tables hold several existence questions per scene
        subset = subset.groupby("family", sort=False).head(int(per_family))
    limit = evaluation.get("max_records")
    if limit:
        subset = subset.head(int(limit))
    style = evaluation.get("prompt_style", "protocol")
    prompts = [
        make_prompt(q, list(o), style, mode)
        for q, o in zip(subset["question"], subset["options"], strict=True)
    ]
    pictures = [load_image(images, key) for key in subset["image"]]
    answers = defender.generate(
        pictures,
        prompts,
        max_new_tokens=int(evaluation.get("max_new_tokens", 12)),
        batch_size=int(evaluation.get("batch_size", 32)),
        progress=True,
    )
    out = subset[["record_id", "scene_id", "family", "subtype", "answer", "answer_text"]].copy()
    out["response"] = [a[0] for a in answers]
    scores = [
        correct_first_reward(r, a, list(o), mode=mode, answer_text=t)
        for r, a, o, t in zip(
            out["response"], subset["answer"], subset["options"], subset["answer_text"], strict=True
        )
    ]
    out["extracted"] = [s.extracted for s in scores]
    out["reward"] = [s.overall for s in scores]
    out["correct"] = [s.accuracy > 0 for s in scores]
    return out.reset_index(drop=True)


def summarize_clean(predictions: pd.DataFrame) -> dict[str, Any]:
    """Accuracy per family and overall, and how often an answer could be parsed at all."""
    metrics = accuracy_by_family(predictions)
    logger.info("Clean accuracy: %s", {k: round(v, 3) for k, v in metrics["accuracy"].items()})
    return metrics


# --- robustness by round ------------------------------------------------------------------------
BY_ROUND_COLUMNS = [
    "model",
    "series",
    "round",
    "suite",
    "family",
    "protocol",
    "accuracy",
    "n",
]
_ROUND_MODEL = re.compile(r"^aot_round_(\d+)$")


def model_round(name: str, n_rounds: int) -> tuple[str, int]:
    """``(series, round)`` of an evaluated model: ``base`` (the SFT Defender) is round 0 of the
    ``aot`` series and ``aot_round_k`` round k; any other model is a baseline, its own series,
    placed at round ``n_rounds`` (it was trained with the compute of all self-play rounds)."""
    if name == "base":
        return "aot", 0
    match = _ROUND_MODEL.match(name)
    if match:
        return "aot", int(match.group(1))
    return name, n_rounds


def robustness_by_round(
    *predictions: pd.DataFrame, model_names: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Tidy accuracy table, one row per model x suite x protocol x question family (plus the
    ``overall`` family), with each model's series and round (see ``model_round``)."""
    n_rounds = max((model_round(m, 0)[1] for m in model_names if _ROUND_MODEL.match(m)), default=0)
    parts = []
    for name, table in zip(model_names, predictions, strict=True):
        series, round_ = model_round(name, n_rounds)
        for part in (table, table.assign(family="overall")):
            grouped = part.groupby(["suite", "protocol", "family"])["correct"].agg(["mean", "size"])
            grouped = grouped.rename(columns={"mean": "accuracy", "size": "n"}).reset_index()
            parts.append(grouped.assign(model=name, series=series, round=round_))
    if not parts:
        return pd.DataFrame(columns=BY_ROUND_COLUMNS)
    out = pd.concat(parts, ignore_index=True)[BY_ROUND_COLUMNS]
    out["accuracy"] = out["accuracy"].astype(float)
    out["n"] = out["n"].astype(int)
    return out.sort_values(["round", "model", "suite", "protocol", "family"], ignore_index=True)


def attacked_by_round(table: pd.DataFrame, protocol: str = "greedy") -> pd.DataFrame:
    """Accuracy over all ``attacked_*`` suites pooled (weighted by n), per series, model, round
    and family, for one protocol."""
    rows = table[table["suite"].str.startswith("attacked_") & (table["protocol"] == protocol)]
    rows = rows.assign(hits=rows["accuracy"] * rows["n"])
    pooled = rows.groupby(["series", "model", "round", "family"], as_index=False)[["hits", "n"]]
    out = pooled.sum()
    out["accuracy"] = out["hits"] / out["n"]
    return out.drop(columns="hits").sort_values(["series", "round", "family"], ignore_index=True)


def plot_robustness_by_round(table: pd.DataFrame, protocol: str = "greedy") -> Figure:
    """One panel per question family (and ``overall``): accuracy on the attacked suites over
    AOT rounds; each baseline is a dashed line from the base Defender (round 0, where it also
    starts) to its own point at the same compute."""
    pooled = attacked_by_round(table, protocol)
    present = set(table["family"])
    families = [f for f in FAMILIES if f in present]
    families += sorted(present - set(families) - {"overall"}) + ["overall"]
    fig, axes = plt.subplots(
        1, len(families), figsize=(2.6 * len(families), 2.8), sharey=True, squeeze=False
    )
    rounds = sorted(set(table["round"]))
    baselines = sorted(set(pooled["series"]) - {"aot"})
    colours = {"aot": "C0"} | {name: f"C{k + 1}" for k, name in enumerate(baselines)}
    legend: dict[str, Any] = {}
    for ax, family in zip(axes[0], families, strict=True):
        _panel(ax, pooled[pooled["family"] == family], family, colours)
        ax.set_xticks(rounds)
        if rounds:
            ax.set_xlim(rounds[0] - 0.3, rounds[-1] + 0.3)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    axes[0][0].set_ylabel(f"{protocol} accuracy, attacked suites")
    handles = list(legend.values())
    if handles:
        fig.legend(handles, list(legend), loc="lower center", ncol=len(legend), fontsize=8)
    fig.suptitle("Robustness to the Attackers' edits over self-play rounds", fontsize=10)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    return fig


def _panel(ax: Axes, pooled: pd.DataFrame, family: str, colours: dict[str, str]) -> None:
    ax.set_title(family, fontsize=9)
    ax.set_ylim(0, 1)
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
    aot = pooled[pooled["series"] == "aot"].sort_values("round")
    if pooled.empty:
        ax.text(0.5, 0.5, "no attacked rows", ha="center", va="center", transform=ax.transAxes)
        return
    ax.plot(aot["round"], aot["accuracy"], "o-", color=colours["aot"], label="AOT")
    start = aot[aot["round"] == 0]
    for series, rows in pooled[pooled["series"] != "aot"].groupby("series"):
        xs, ys = list(rows["round"]), list(rows["accuracy"])
        if not start.empty:
            xs, ys = [0, *xs], [float(start["accuracy"].iloc[0]), *ys]
        ax.plot(xs, ys, "s--", color=colours[series], label=series, markevery=[len(xs) - 1])
