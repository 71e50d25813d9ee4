"""Evaluation suites on held-out scenes: clean, attacked by every Attacker, unseen manipulations;
every Defender answers them greedily and under the paper's strict protocol; a report sums up."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from aot.attacker import BoxEditPipeline
from aot.defender import Defender
from aot.defender.image_cache import BoundedCache
from aot.evaluation import (
    UNSEEN_MANIPULATIONS,
    answer_tables,
    apply_unseen,
    attack_success,
    common_attack_success,
    flatten_metrics,
)
from aot.evaluation import summarize as summarize_suite
from aot.evaluation.protocols import DecodedImages
from aot.selfplay import attack_records

logger = logging.getLogger(__name__)
ATTACKED_POOLED = "attacked_pooled"  # every attacked suite together, for the paired metric
SUITE_COLUMNS = [
    "record_id",
    "scene_id",
    "family",
    "subtype",
    "question",
    "options",
    "answer",
    "answer_text",
    "target_boxes",
    "image",
    "source_record_id",  # the clean record an edited row comes from (itself for clean rows)
]


def _clean_rows(records: pd.DataFrame, params: dict[str, Any], seed: int) -> pd.DataFrame:
    """The clean suite: a seeded sample of the held-out split (the attacked and unseen suites
    edit its first rows)."""
    suites = params.get("suites", {})
    split = params.get("split", "test")
    held_out = records[records["split"] == split]
    if held_out.empty:
        raise ValueError(f"evaluation: no records in split '{split}'")
    clean = held_out.sample(
        n=min(len(held_out), int(suites.get("clean_records", 120))), random_state=seed
    ).reset_index(drop=True)
    return clean.assign(source_record_id=clean["record_id"])


def attack_suite(
    base_defender: Defender,
    scenes: pd.DataFrame,
    records: pd.DataFrame,
    images: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    attacker: BoxEditPipeline,
    *,
    attacker_name: str,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One Attacker's suite: its valid edits (integrity, guard, validity) of the clean suite's
    first rows, and the edited images. One node per Attacker, so that a parallel runner edits
    with two at once; each call seeds its own sampling, so the order does not matter."""
    suites = params.get("suites", {})
    clean = _clean_rows(records, params, seed)
    attacked, edited = attack_records(
        attacker,
        base_defender,
        clean.head(int(suites.get("attacked_records", 100))),
        images,
        scenes,
        edits_per_record=int(suites.get("attacked_edits_per_record", 1)),
        sampling_steps=int(suites.get("sampling_steps", 6)),
        noise_level=float(suites.get("noise_level", 0.7)),
        k=1,
        batch_size=32,
        seed=seed + 17,
        prefix=f"eval-{attacker_name}",
        reward=suites.get("reward"),
    )
    valid = attacked[(attacked["gate"] > 0) & (attacked["gt_ok"] > 0) & (attacked["valid"] > 0)]
    logger.info("suite attacked_%s: %d valid edits of %d", attacker_name, len(valid), len(attacked))
    table = valid[SUITE_COLUMNS + ["clean_image"]].assign(suite=f"attacked_{attacker_name}")
    return table.reset_index(drop=True), {k: edited[k] for k in valid["image"]}


def build_suites(
    records: pd.DataFrame,
    images: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    *attacked: pd.DataFrame,
    attacker_names: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The held-out suites as one table (``suite`` column) plus the unseen manipulations'
    images: the clean suite, each Attacker's suite (``attacked``: `attack_suite`'s table per
    name in ``attacker_names``, in turn) and the unseen manipulations (never used in training;
    target pixels kept).

    The Attackers' edited images stay in their own folders (`attack_suite`'s second output):
    passed through here, every image would be held in memory once more, by the parallel
    runner's manager process, and written to disk a second time.
    """
    if len(attacked) != len(attacker_names):
        raise ValueError(
            f"build_suites: {len(attacked)} attacked tables for {len(attacker_names)} Attackers"
        )
    suites = params.get("suites", {})
    clean = _clean_rows(records, params, seed)
    parts = [clean[SUITE_COLUMNS].assign(suite="clean", clean_image=clean["image"])]
    parts += list(attacked)
    extra: dict[str, Any] = {}
    names = list(suites.get("unseen", list(UNSEEN_MANIPULATIONS)))
    if names:
        base = clean.head(int(suites.get("unseen_records", 32)))
        unseen, extra = apply_unseen(base[SUITE_COLUMNS], images, names, seed=seed)
        parts.append(
            unseen[SUITE_COLUMNS].assign(
                suite=[f"unseen_{m}" for m in unseen["manipulation"]],
                clean_image=unseen["source_image"],
            )
        )
    table = pd.concat(parts, ignore_index=True)
    logger.info("Evaluation suites: %s", table["suite"].value_counts().to_dict())
    return table, extra


def answer_suites(
    defender: Defender,
    suites: pd.DataFrame,
    suite_images: dict[str, Any],
    images: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    *attacked_images: dict[str, Any],
) -> pd.DataFrame:
    """Every suite row answered under each protocol in ``params.protocols``; its image is in
    ``images`` (clean), ``suite_images`` (unseen manipulations) or one of ``attacked_images``
    (each Attacker's edits).

    Each image is decoded and encoded once for all the protocols' passes (up to
    ``1 + trials``), within ``params.image_cache_mb`` megabytes (0: no reuse across passes).
    """
    cache = BoundedCache(int(params.get("image_cache_mb", 1024)) * 2**20)
    every = {**images, **suite_images}
    for edited in attacked_images:
        every.update(edited)
    pictures = DecodedImages(every, cache)
    # a scripted Defender (tests) has nothing to reuse
    reuse = defender.reusing_images(cache) if hasattr(defender, "reusing_images") else nullcontext()
    with reuse:
        protocols = list(params.get("protocols", ["greedy", "strict"]))
        answered = answer_tables(
            defender,
            suites,
            pictures,
            protocols=protocols,
            mode=params.get("answer_mode", "word"),
            trials=int(params.get("trials", 3)),
            temperature=float(params.get("temperature", 1.0)),
            batch_size=int(params.get("batch_size", 32)),
            max_new_tokens=int(params.get("max_new_tokens", 12)),
            seed=seed,
        )
        out = [answered[p].assign(protocol=p) for p in protocols]
    logger.info(
        "Image cache: %d entries, %.0f of %.0f MB",
        len(cache),
        cache.bytes / 2**20,
        cache.max_bytes / 2**20,
    )
    table = pd.concat(out, ignore_index=True)
    return table.drop(columns=[c for c in ("responses",) if c in table])


def report_evaluation(
    *predictions: pd.DataFrame, model_names: tuple[str, ...] = ()
) -> tuple[dict[str, Any], Figure, str]:
    """metrics.json (``model/suite/protocol/...`` keys), a robustness figure and a Markdown
    report that says in plain words whether the AOT rounds beat the base Defender here.

    Besides accuracy, every suite with clean counterparts gets the paired attack success
    (``model/<suite>/<protocol>/attack_success/<family>``, with ``pairs`` and ``fooled``), and
    the attacked suites pooled get it as ``model/attacked_pooled/...``; the same on the
    questions every model answers right when clean (``common_attack_success``,
    ``common_pairs``, ``common_fooled``: `aot.evaluation.paired.common_attack_success`).
    """
    nested: dict[str, Any] = {}
    rows = []
    paired = []
    pooled = {ATTACKED_POOLED: "attacked_"}
    for name, table in zip(model_names, predictions, strict=True):
        for (suite, protocol), group in table.groupby(["suite", "protocol"]):
            summary = summarize_suite(group)
            nested.setdefault(name, {}).setdefault(suite, {})[protocol] = summary
            rows.append(
                {
                    "model": name,
                    "suite": suite,
                    "protocol": protocol,
                    "accuracy": summary["accuracy"]["overall"],
                    "n": summary["n"]["overall"],
                }
            )
        paired.append(attack_success(table, pooled=pooled).assign(model=name))
    paired_table = pd.concat(paired, ignore_index=True) if paired else pd.DataFrame()
    common = common_attack_success(dict(zip(model_names, predictions, strict=True)), pooled=pooled)
    for prefix, flips in (("", paired_table), ("common_", common)):
        if flips.empty:
            continue
        for (name, suite, protocol), group in flips.groupby(["model", "suite", "protocol"]):
            entry = nested.setdefault(name, {}).setdefault(suite, {}).setdefault(protocol, {})
            for column in ("attack_success", "pairs", "fooled"):
                entry[prefix + column] = dict(zip(group["family"], group[column], strict=True))
    metrics = flatten_metrics(nested)
    table = pd.DataFrame(rows)
    report = _markdown(table, paired_table, common, model_names)
    return metrics, _figure(table, model_names), report


def _group(suite: str) -> str:
    return "clean" if suite == "clean" else suite.split("_")[0]


def _figure(table: pd.DataFrame, model_names: tuple[str, ...]) -> Figure:
    greedy = table[table["protocol"] == "greedy"].copy()
    greedy["group"] = greedy["suite"].map(_group)
    means = greedy.groupby(["model", "group"])["accuracy"].mean().unstack()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    x = np.arange(len(model_names))
    for group in ("clean", "attacked", "unseen"):
        if group in means:
            ax.plot(x, [means[group].get(m, np.nan) for m in model_names], "o-", label=group)
    ax.set_xticks(x, model_names, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("greedy accuracy (held-out)")
    ax.set_title("Defender accuracy by suite, base then each AOT round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _markdown(
    table: pd.DataFrame, flips: pd.DataFrame, common: pd.DataFrame, model_names: tuple[str, ...]
) -> str:
    greedy = table[table["protocol"] == "greedy"]
    pivot = greedy.pivot_table(index="suite", columns="model", values="accuracy")
    pivot = pivot[[m for m in model_names if m in pivot.columns]]
    lines = ["# Evaluation report", "", "Greedy accuracy on held-out scenes (n per suite in the"]
    lines += ["metrics file). Strict-protocol numbers are in metrics.json.", ""]
    lines.append("| suite | " + " | ".join(pivot.columns) + " |")
    lines.append("|---" * (len(pivot.columns) + 1) + "|")
    for suite, row in pivot.iterrows():
        lines.append(f"| {suite} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    lines += ["", *_verdicts(table, model_names), *_paired_section(flips, model_names)]
    lines += _paired_section(common, model_names, common=True)
    return "\n".join(lines)


def _paired_section(
    flips: pd.DataFrame, model_names: tuple[str, ...], common: bool = False
) -> list[str]:
    """Greedy attack success per attacked suite and pooled (fooled / pairs), and a verdict on
    the pooled figure for the last AOT Defender; ``common``: on the questions every model
    answers right when clean."""
    if flips.empty:
        return []
    rows = flips[
        (flips["protocol"] == "greedy")
        & (flips["family"] == "overall")
        & flips["suite"].str.startswith("attacked_")
    ]
    if rows.empty:
        return []
    models = [m for m in model_names if m in set(rows["model"])]
    if common:
        lines = ["## Attack success on common questions (paired)", ""]
        lines += ["The same, on the questions every Defender here answers right on the clean"]
        lines += ["image: every model is scored on the same pairs, so a Defender that gets more"]
        lines += ["clean questions wrong cannot look robust by dropping them.", ""]
    else:
        lines = ["## Attack success (paired)", ""]
        lines += ["Of the questions a Defender answers right on the clean image, the share it"]
        lines += ["gets wrong after the edit (greedy; fooled / pairs). Lower is more robust.", ""]
    lines.append("| suite | " + " | ".join(models) + " |")
    lines.append("|---" * (len(models) + 1) + "|")
    cells = {
        (r["suite"], r["model"]): f"{r['attack_success']:.3f} ({r['fooled']}/{r['pairs']})"
        for r in rows.to_dict("records")
    }
    suites = sorted(set(rows["suite"]) - {ATTACKED_POOLED}) + [ATTACKED_POOLED]
    for suite in suites:
        values = [cells.get((suite, m), "-") for m in models]
        lines.append(f"| {suite} | " + " | ".join(values) + " |")
    aot = [m for m in models if m.startswith("aot_")]
    if aot:
        pooled = rows[rows["suite"] == ATTACKED_POOLED].set_index("model")["attack_success"]
        last = aot[-1]
        others = [m for m in models if m != last and m in pooled]
        lower = [m for m in others if pooled[last] < pooled[m]]
        detail = ", ".join(f"{m} {pooled[m]:.3f}" for m in others)
        verdict = (
            "lower than every other model on this run."
            if len(lower) == len(others)
            else f"not lower than {', '.join(m for m in others if m not in lower)}."
        )
        lines += [
            "",
            f"- {last}'s pooled attack success is {pooled[last]:.3f} ({detail}): {verdict}",
        ]
    if not common:
        lines += ["", "One seed, and fooled questions are few: a difference of a handful is noise."]
        lines += ["`make seeds` pools several (fooled / pairs summed in its summary.md)."]
    return [*lines, ""]


def _verdicts(table: pd.DataFrame, model_names: tuple[str, ...]) -> list[str]:
    """Plain-words comparison of the last AOT Defender with every other model on the attacked
    suites, per protocol (mean over the attacked suites)."""
    attacked = table[table["suite"].str.startswith("attacked")]
    aot = [m for m in model_names if m.startswith("aot_")]
    if attacked.empty or not aot:
        return [
            "No attacked suite had a valid edit, or no AOT round was evaluated: no verdict.",
            "",
        ]
    last = aot[-1]
    lines = []
    for protocol, group in attacked.groupby("protocol"):
        means = group.groupby("model")["accuracy"].mean()
        others = [m for m in model_names if m != last and m in means]
        beaten = [m for m in others if means[last] > means[m]]
        detail = ", ".join(f"{m} {means[m]:.3f}" for m in others)
        lines.append(
            f"- {protocol}: on attacked scenes {last} scores {means[last]:.3f} ({detail}); "
            + (
                "AOT beat every other model on this run."
                if len(beaten) == len(others)
                else f"AOT did not beat {', '.join(m for m in others if m not in beaten)}."
            )
        )
    lines += ["", "One seed; differences of a few points are within noise at these sizes.", ""]
    return lines
