"""Time per self-play round at 1x, 2x and 4x the number of source scenes.

Run: `.venv/bin/python benchmarks/bench_scaling.py [--scales 1 2 4] [--work fixed|scaled]`
after `dvc repro` (the round starts from its models: data/06_models/defender_sft and
attacker_cold). For each scale the project's conf/ and data/ are copied to a temporary folder,
the source and extended scenes are regenerated there at `scale` x `source.n_scenes`
(`kedro run --pipelines bootstrap_dataset --tags source_data`), and `selfplay.round_1` runs on
them (`kedro run --pipelines selfplay --namespaces selfplay.round_1`); data/ is left as it was.

`--work fixed` keeps the round's step counts and record caps, so only what reads whole tables
grows with the data. `--work scaled` multiplies by `scale` what a user would grow with the data:
the records the Attacker practises on and the curriculum edits (`max_records`), the curriculum's
size bounds, the Flow-GRPO and DAPO step counts and the held-out evaluation records.
Writes benchmarks/results/scaling_<work>.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from report_notes import write_report

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_scaling")
ROUND = "selfplay.round_1"


def _params(scale: int, work: str) -> dict[str, object]:
    base = {}
    for name in ("parameters.yml", "parameters_bootstrap_dataset.yml", "parameters_selfplay.yml"):
        base.update(yaml.safe_load((ROOT / "conf" / "base" / name).read_text()))
    params: dict[str, object] = {"source.n_scenes": scale * int(base["source"]["n_scenes"])}
    if work == "scaled":
        play = base["selfplay"]
        for key in (
            "attacker.max_records",
            "attacker.steps",
            "curriculum.max_records",
            "curriculum.max_size",
            "curriculum.min_size",
            "defender.max_steps",
            "evaluation.max_records",
        ):
            group, name = key.split(".")
            params[f"selfplay.{key}"] = scale * int(play[group][name])
    return params


def _kedro(project: Path, args: list[str]) -> tuple[float, float]:
    """Runs `kedro run` in `project`; returns its wall seconds and peak RSS (GB) so far."""
    kedro = str(Path(sys.executable).with_name("kedro"))
    start = time.perf_counter()
    proc = subprocess.run(
        [kedro, "run", "--env", "base", *args],
        cwd=project,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"kedro run {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2


def measure(scale: int, work: str) -> dict[str, float]:
    params = _params(scale, work)
    cli = ",".join(f"{k}={v}" for k, v in params.items())
    with tempfile.TemporaryDirectory(prefix=f"aot-scaling-{scale}x-") as tmp:
        project = Path(tmp)
        # seeds/ and smoke/ hold other runs' data (make seeds, the tests): not the round's inputs
        skip = shutil.ignore_patterns("seeds", "smoke")
        for name in ("conf", "data"):
            shutil.copytree(ROOT / name, project / name, symlinks=True, ignore=skip)
        shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
        shutil.copytree(ROOT / "src" / "aot", project / "src" / "aot")  # the CLI wants src/
        data_s, _ = _kedro(
            project, ["--pipelines", "bootstrap_dataset", "--tags", "source_data", "--params", cli]
        )
        round_s, peak = _kedro(
            project, ["--pipelines", "selfplay", "--namespaces", ROUND, "--params", cli]
        )
        metrics = json.loads(
            (project / "data/08_reporting/selfplay/round_1/metrics.json").read_text()
        )
        records = len(pd.read_parquet(project / "data/02_intermediate/extended/records.parquet"))
    curriculum = metrics.get("curriculum", {})
    return {
        "scale": scale,
        "scenes": params["source.n_scenes"],
        "records": records,
        "data_s": data_s,
        "round_s": round_s,
        "peak_gb": peak,
        "edits": curriculum.get("edits", float("nan")),
        "curriculum_rows": curriculum.get("kept_attacks", 0) + curriculum.get("replayed", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--work", choices=("fixed", "scaled"), default="scaled")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for scale in args.scales:
        row = measure(scale, args.work)
        logger.info("%s", row)
        rows.append(row)
    first = rows[0]
    lines = [
        f"# Time per self-play round against data size (`--work {args.work}`)",
        "",
        f"`benchmarks/bench_scaling.py --scales {' '.join(map(str, args.scales))} --work "
        f"{args.work}`, {os.cpu_count()} cores; the round is `{ROUND}` of the default env, from "
        "the default run's cold-start Attacker and warmed-up Defender. Peak memory is the largest "
        "`kedro run` process so far.",
        "",
        "| scale | source scenes | extended records | scene generation s | round s | round / 1x "
        "| curriculum edits | curriculum rows | peak GB |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['scale']}x | {r['scenes']} | {r['records']} | {r['data_s']:.0f} | "
            f"{r['round_s']:.0f} | {r['round_s'] / first['round_s']:.2f} | {r['edits']:.0f} | "
            f"{r['curriculum_rows']:.0f} | {r['peak_gb']:.2f} |"
            for r in rows
        ],
    ]
    out = ROOT / "benchmarks" / "results" / f"scaling_{args.work}.md"
    write_report(out, "\n".join(lines))
    logger.info("\n".join(lines))


if __name__ == "__main__":
    main()
