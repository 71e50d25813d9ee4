"""The default pipeline under several seeds, and the mean and spread of its key metrics.

One command::

    make seeds SEEDS="42 43 44"            # ENV=smoke for the tiny sizes
    # = python -m aot.evaluation.seeds run --env base --seeds 42 43 44

For each seed it runs ``kedro run --env <env> --params seed=<N>`` into its own data root,
``<data_root>/seeds/seed_<N>/`` (the default run's data is never touched), then collects every
seed's ``08_reporting/evaluation/metrics.json`` and writes
``<data_root>/08_reporting/seeds/summary.csv`` (long form: model, suite, protocol, metric,
n_seeds, mean, std, min, max, seeds, values) and ``summary.md`` (accuracy, mean ± std and
min–max per suite and model). ``python -m aot.evaluation.seeds summarize ...`` rewrites the
summary from finished runs without running anything.

Why ``kedro run`` per seed and not ``dvc exp run --queue -S conf/base/parameters.yml:seed=N``:

* ``dvc.yaml``'s stages pin ``--env base`` and the default ``data/`` paths, so DVC experiments
  cannot run the ``smoke`` env (the tests, CI) without a second ``dvc.yaml``;
* a queued experiment runs in a temporary copy of the last git commit (uncommitted changes are
  silently left out) and its metrics live in git refs, to be read back with ``dvc exp show``;
* ``seed`` is a parameter of every stage, so DVC's cache saves no work across seeds anyway.

Why a copy of ``conf/`` per seed: ``data_root`` is a Kedro global, and Kedro refuses the
``runtime_params`` resolver in globals, so ``--params`` cannot move the outputs. Each seed gets
``<seed root>/conf``, a copy of ``conf/`` whose ``<env>/globals.yml`` sets ``data_root`` to the
seed root, passed to Kedro with ``--conf-source``. Everything else is the project's own config.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from aot.evaluation.suites import as_flat, mean_and_spread

logger = logging.getLogger(__name__)

# model/suite/protocol/<metric>: the metrics summarised by default.
KEY_METRICS = (
    "accuracy/overall",
    "parsed/overall",
    "attack_success/overall",  # paired (aot.evaluation.paired), with its counts
    "pairs/overall",
    "fooled/overall",
    "common_attack_success/overall",  # the same on questions every model answers right clean
    "common_pairs/overall",
    "common_fooled/overall",
)
SUMMARY_COLUMNS = [
    "model",
    "suite",
    "protocol",
    "metric",
    "n_seeds",
    "mean",
    "std",
    "min",
    "max",
    "seeds",
    "values",
]
METRICS_FILE = Path("08_reporting") / "evaluation" / "metrics.json"
SUMMARY_DIR = Path("08_reporting") / "seeds"


# --- pure parts ---------------------------------------------------------------------------------
def split_key(key: str) -> tuple[str, str, str, str] | None:
    """``"base/clean/greedy/accuracy/overall"`` -> ``("base", "clean", "greedy",
    "accuracy/overall")``; None for a key with fewer than four levels."""
    parts = key.split("/")
    if len(parts) < 4:
        return None
    model, suite, protocol, *metric = parts
    return model, suite, protocol, "/".join(metric)


def summarize_seeds(
    metrics_by_seed: Mapping[int, Mapping[str, Any]], metrics: Sequence[str] = KEY_METRICS
) -> pd.DataFrame:
    """Per model x suite x protocol x metric (only ``metrics``): how many seeds have it, their
    mean, sample std (ddof=1; 0.0 for one seed), min and max, and the seeds and values.

    ``metrics_by_seed`` maps a seed to its evaluation ``metrics.json`` (flat
    ``model/suite/protocol/metric/group`` keys, or the same nested). A metric missing for a seed
    is summarised over the seeds that have it; non-finite values are ignored.
    """
    values: dict[tuple[str, str, str, str], dict[int, float]] = {}
    for seed, raw in metrics_by_seed.items():
        for key, value in as_flat(raw).items():
            parts = split_key(key)
            if parts is not None and parts[3] in metrics and math.isfinite(float(value)):
                values.setdefault(parts, {})[int(seed)] = float(value)
    rows = []
    for (model, suite, protocol, metric), by_seed in sorted(values.items()):
        spread = mean_and_spread(by_seed)
        seeds = sorted(by_seed)
        rows.append(
            {
                "model": model,
                "suite": suite,
                "protocol": protocol,
                "metric": metric,
                "n_seeds": spread["n"],
                "mean": spread["mean"],
                "std": spread["std"],
                "min": min(by_seed.values()),
                "max": max(by_seed.values()),
                "seeds": " ".join(str(s) for s in seeds),
                "values": " ".join(f"{by_seed[s]:.6g}" for s in seeds),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def suite_group(suite: str) -> str | None:
    """The group a suite is averaged into: ``clean``, ``attacked`` (every Attacker's suite) or
    ``unseen`` (every unseen manipulation); None for the rest (POPE splits, benchmarks)."""
    if suite == "clean":
        return "clean"
    for prefix, group in (("attacked_", "attacked"), ("unseen_", "unseen")):
        if suite.startswith(prefix):
            return group
    return None


def group_means(summary: pd.DataFrame, metric: str = "accuracy/overall") -> pd.DataFrame:
    """Per model x group x protocol: each seed's mean of ``metric`` over the group's suites
    (see :func:`suite_group`), then the mean, sample std and min–max of those over the seeds.

    Read from ``summary``'s per-seed ``values``, so the spread is the seed-to-seed spread of the
    group mean, not an average of per-suite spreads. A seed is averaged over the suites it has.
    """
    rows = []
    for row in summary[summary["metric"] == metric].itertuples():
        group = suite_group(row.suite)
        if group is None:
            continue
        for seed, value in zip(str(row.seeds).split(), str(row.values).split(), strict=True):
            rows.append((row.model, group, row.protocol, int(seed), float(value)))
    columns = ["model", "group", "protocol", "n_seeds", "mean", "std", "min", "max"]
    if not rows:
        return pd.DataFrame(columns=columns)
    per_seed = (
        pd.DataFrame(rows, columns=["model", "group", "protocol", "seed", "value"])
        .groupby(["model", "group", "protocol", "seed"], sort=False)["value"]
        .mean()
    )
    out = []
    for (model, group, protocol), values in per_seed.groupby(level=[0, 1, 2], sort=False):
        spread = mean_and_spread(values.tolist())
        out.append(
            (
                model,
                group,
                protocol,
                spread["n"],
                spread["mean"],
                spread["std"],
                float(values.min()),
                float(values.max()),
            )
        )
    return pd.DataFrame(out, columns=columns)


def summary_markdown(summary: pd.DataFrame, metric: str = "accuracy/overall") -> str:
    """One table per protocol: a row per suite, a column per model, cells
    ``mean ± std (min–max)`` of ``metric`` over the seeds."""
    chosen = summary[summary["metric"] == metric]
    seeds = sorted({s for cell in summary["seeds"] for s in str(cell).split()}, key=int)
    lines = [
        "# Seeds: mean and spread",
        "",
        f"`{metric}` on the held-out suites over seeds {', '.join(seeds) or '(none)'}: "
        "mean ± sample std (ddof=1) and min–max; `[k of n seeds]` where a suite had rows in only "
        "k runs. Every summarised metric, with each seed's value, is in summary.csv.",
        "",
    ]
    groups = group_means(summary, metric)
    if not groups.empty:
        models = _model_order(groups["model"])
        lines += [
            "## suite groups (greedy / strict)",
            "",
            "Each seed's mean over the group's suites (every Attacker; every unseen "
            "manipulation), then mean ± std over the seeds.",
            "",
            "| group | " + " | ".join(models) + " |",
            "|---" * (len(models) + 1) + "|",
        ]
        by_key = groups.set_index(["model", "group", "protocol"])
        for group in ("clean", "attacked", "unseen"):
            if group not in set(groups["group"]):
                continue
            cells = []
            for model in models:
                parts = [
                    f"{by_key.loc[(model, group, p), 'mean']:.3f} ± "
                    f"{by_key.loc[(model, group, p), 'std']:.3f}"
                    if (model, group, p) in by_key.index
                    else "–"
                    for p in ("greedy", "strict")
                ]
                cells.append(" / ".join(parts))
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _paired_lines(summary)
    lines += _paired_lines(summary, common=True)
    for protocol, table in chosen.groupby("protocol", sort=False):
        models = _model_order(table["model"])
        lines += [f"## {protocol}", "", "| suite | " + " | ".join(models) + " |"]
        lines.append("|---" * (len(models) + 1) + "|")
        for suite, rows in table.groupby("suite", sort=False):
            by_model = rows.set_index("model")
            cells = [
                _cell(by_model.loc[m], len(seeds)) if m in by_model.index else "" for m in models
            ]
            lines.append(f"| {suite} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _paired_lines(
    summary: pd.DataFrame, suite: str = "attacked_pooled", common: bool = False
) -> list[str]:
    """Paired attack success on ``suite`` per model and protocol: mean ± std over the seeds,
    and fooled / pairs summed over the seeds (the pooled rate); ``common``: on the questions
    every model answers right when clean (`aot.evaluation.paired.common_attack_success`)."""
    prefix = "common_" if common else ""
    part = summary[summary["suite"] == suite]
    if f"{prefix}attack_success/overall" not in set(part["metric"]):
        return []
    rows = part.set_index(["model", "protocol", "metric"])
    models = _model_order(part["model"])
    which = (
        "Of the questions every Defender answers right on the clean image (one set per seed)"
        if common
        else "Of the questions a Defender answers right on the clean image"
    )
    lines = [
        f"## attack success, {suite} (paired{', common questions' if common else ''})",
        "",
        f"{which}, the share it gets wrong "
        "after an Attacker's edit: mean ± std over the seeds; in brackets fooled / pairs summed "
        "over the seeds. Lower is more robust.",
        "",
        "| protocol | " + " | ".join(models) + " |",
        "|---" * (len(models) + 1) + "|",
    ]
    for protocol in sorted(set(part["protocol"])):
        cells = []
        for model in models:
            key = (model, protocol, f"{prefix}attack_success/overall")
            if key not in rows.index:
                cells.append("–")
                continue
            text = f"{rows.loc[key, 'mean']:.3f} ± {rows.loc[key, 'std']:.3f}"
            counts = [(model, protocol, f"{prefix}{m}/overall") for m in ("fooled", "pairs")]
            if all(c in rows.index for c in counts):
                # a count's sum over the seeds is its mean times the number of seeds
                fooled, pairs = (
                    round(rows.loc[c, "mean"] * rows.loc[c, "n_seeds"]) for c in counts
                )
                text += f" ({fooled}/{pairs})"
            cells.append(text)
        lines.append(f"| {protocol} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _model_order(models: pd.Series) -> list[str]:
    """``base`` first, then the baselines, then the AOT rounds in order."""
    names = list(dict.fromkeys(models))
    return sorted(names, key=lambda m: (m != "base", m.startswith("aot_"), _natural(m)))


def _natural(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (name, 0)


def _cell(row: pd.Series, n_seeds: int) -> str:
    """``mean ± std (min–max)``, plus ``[k seeds]`` when only k of the seeds have the metric (a
    suite can be empty for some seeds, e.g. an Attacker without a valid edit)."""
    text = f"{row['mean']:.3f} ± {row['std']:.3f} ({row['min']:.3f}–{row['max']:.3f})"
    return text if row["n_seeds"] == n_seeds else f"{text} [{row['n_seeds']} of {n_seeds} seeds]"


def seed_root(data_root: str | Path, seed: int) -> Path:
    """Where seed ``seed``'s run writes: ``<data_root>/seeds/seed_<seed>``."""
    return Path(data_root) / "seeds" / f"seed_{int(seed)}"


def kedro_command(kedro: str | Path, env: str, conf_source: str | Path, seed: int) -> list[str]:
    """The ``kedro run`` of one seed."""
    return [
        str(kedro),
        "run",
        "--env",
        env,
        "--conf-source",
        str(conf_source),
        "--params",
        f"seed={int(seed)}",
    ]


# --- runs and files -----------------------------------------------------------------------------
def env_data_root(conf: Path, env: str) -> str:
    """``data_root`` of ``env`` as Kedro resolves it: the env's globals, else base's."""
    for name in (env, "base"):
        path = conf / name / "globals.yml"
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
        if data and "data_root" in data:
            return str(data["data_root"])
    return "data"


def seed_conf(conf: Path, env: str, target: Path, data_root: str) -> Path:
    """A fresh copy of ``conf`` (without ``local``) at ``target`` whose ``env`` globals set
    ``data_root``."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(conf, target, ignore=shutil.ignore_patterns("local"))
    (target / "local").mkdir(exist_ok=True)
    globals_path = target / env / "globals.yml"
    globals_path.parent.mkdir(parents=True, exist_ok=True)
    data = (yaml.safe_load(globals_path.read_text()) if globals_path.is_file() else None) or {}
    data["data_root"] = data_root
    globals_path.write_text(
        "# written by aot.evaluation.seeds: this seed's outputs go to its own folder\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    return target


def run_seed(project: Path, env: str, seed: int, kedro: Path) -> Path:
    """``kedro run`` of one seed into its own data root; returns that seed's metrics.json."""
    root = seed_root(env_data_root(project / "conf", env), seed)
    seed_conf(project / "conf", env, project / root / "conf", root.as_posix())
    command = kedro_command(kedro, env, root / "conf", seed)
    logger.info("seed %d: %s", seed, " ".join(command))
    subprocess.run(command, cwd=project, check=True)
    return project / root / METRICS_FILE


def load_seed_metrics(project: Path, env: str, seeds: Sequence[int]) -> dict[int, dict]:
    """Every seed's evaluation metrics.json; FileNotFoundError names the missing ones."""
    root = env_data_root(project / "conf", env)
    paths = {s: project / seed_root(root, s) / METRICS_FILE for s in seeds}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            "no metrics for some seeds (run `python -m aot.evaluation.seeds run` first): "
            + ", ".join(missing)
        )
    return {s: json.loads(p.read_text()) for s, p in paths.items()}


def write_summary(
    project: Path, env: str, seeds: Sequence[int], metrics: Sequence[str] = KEY_METRICS
) -> Path:
    """summary.csv and summary.md under ``<data_root>/08_reporting/seeds/``; returns the folder."""
    summary = summarize_seeds(load_seed_metrics(project, env, seeds), metrics)
    out = project / env_data_root(project / "conf", env) / SUMMARY_DIR
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(summary_markdown(summary))
    logger.info("seed summary of %d rows written to %s", len(summary), out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aot.evaluation.seeds", description=__doc__)
    parser.add_argument(
        "action", choices=["run", "summarize"], help="run every seed, or only summarize"
    )
    parser.add_argument("--env", default="base", help="Kedro env (base, smoke, paper)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--metrics", nargs="+", default=list(KEY_METRICS))
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="project root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    project = args.project.resolve()
    if args.action == "run":
        kedro = Path(sys.executable).with_name("kedro")
        for seed in args.seeds:
            run_seed(project, args.env, seed, kedro)
    write_summary(project, args.env, args.seeds, args.metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
