"""Wall time and peak memory of each pipeline run, as a user runs them (`kedro run`).

Run: `.venv/bin/python benchmarks/bench_pipelines.py [--env base] [--pipelines a b ...]`.
Each pipeline runs in its own `kedro run` process, in order, on the real project (so it writes
data/ like `make run`). Peak memory is the child's maximum resident set size. Writes
benchmarks/results/pipelines_<env>.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from report_notes import write_report

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_pipelines")


def run(env: str, pipeline: str) -> tuple[float, float, int]:
    kedro = str(Path(sys.executable).with_name("kedro"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(
        [kedro, "run", "--env", env, "--pipelines", pipeline],
        cwd=ROOT,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        logger.error(proc.stdout[-2000:] + proc.stderr[-2000:])
    # ru_maxrss is the max over all children so far; report it only when it grew.
    return wall, max(peak, before) / 1024**2, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", default="base")
    parser.add_argument(
        "--pipelines", nargs="+", default=["bootstrap_dataset", "sft", "evaluation"]
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for pipeline in args.pipelines:
        wall, peak_gb, rc = run(args.env, pipeline)
        rows.append((pipeline, wall, peak_gb, rc))
        logger.info("%s: %.0f s, peak %.2f GB, exit %d", pipeline, wall, peak_gb, rc)
    total = sum(r[1] for r in rows)
    lines = [
        f"`kedro run --env {args.env}`, one process per pipeline, {os.cpu_count()} cores",
        "",
        "| pipeline | wall time | peak memory (max so far) | exit |",
        "|---|---|---|---|",
        *[f"| {p} | {w:.0f} s | {m:.2f} GB | {rc} |" for p, w, m, rc in rows],
        f"| **total** | **{total:.0f} s** | | |",
    ]
    out = ROOT / "benchmarks" / "results" / f"pipelines_{args.env}.md"
    out.parent.mkdir(exist_ok=True)
    write_report(out, "\n".join(lines))
    logger.info("\n".join(lines))


if __name__ == "__main__":
    main()
