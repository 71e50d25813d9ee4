"""Wall time and peak memory of `dvc repro` on a fresh clone, per stage, as a new user meets it.

Run: `.venv/bin/python benchmarks/bench_repro.py [--target sft] [--cached STAGE ...]
[--retrain STAGE ...]`.

Clones the committed project (`git clone` of HEAD) into a temporary folder, links this
checkout's `.venv` into it, and runs `dvc repro TARGET` there under `/usr/bin/time -v`, so
nothing in this checkout's `data/` or DVC cache is touched. Each stage's time runs from DVC's
"Running stage" line to the next one (or the end). Memory is reported two ways: the largest
resident set of any one process (`/usr/bin/time -v`), and the largest sum over every process of
the run at one moment (sampled every 2 s): a stage that runs nodes in parallel processes
(the evaluation's `ParallelRunner`) holds several at once.

``--cached STAGE``: before the run, the clone fetches that stage's outputs from this checkout's
DVC cache (used as a local remote) and checks them out, as after a `dvc pull` of that stage. The
stages before it still run from nothing; when they come out byte-identical, DVC finds the cached
stage up to date and skips it. Issue 3 allows the Defender's world pretraining to be "its own
pipeline node whose output DVC caches, so it is trained once per parameter set":
`--cached base_defender` measured bootstrap_dataset + sft with that node trained once before,
when its outputs were still in DVC's cache only.

Since b1b8224 git holds that node's outputs (`cache: false` in dvc.yaml), so a plain fresh clone
skips the pretraining. ``--retrain STAGE``: the clone deletes that stage's outputs first, so DVC
runs it again: `--retrain base_defender` is the default run from nothing.

Writes `benchmarks/results/repro_<target>[_cached_<stage>...][_retrained_<stage>...].md`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

from report_notes import write_report

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_repro")
ENV = {
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "KEDRO_DISABLE_TELEMETRY": "true",
    "OMP_WAIT_POLICY": "PASSIVE",
}


def stage_times(lines: list[tuple[float, str]], end: float) -> list[tuple[str, float]]:
    """(stage, seconds) from timestamped `dvc repro` output lines, in the order stages ran."""
    starts = []
    for t, line in lines:
        m = re.match(r"Running stage '([^']+)'", line)
        if m:
            starts.append((m.group(1), t))
    bounds = [t for _, t in starts[1:]] + [end]
    return [(name, stop - t) for (name, t), stop in zip(starts, bounds, strict=True)]


def stage_outs(dvc_yaml: Path, stage: str) -> list[str]:
    """The output paths `dvc.yaml` declares for ``stage`` (plain or with options)."""
    outs = yaml.safe_load(dvc_yaml.read_text())["stages"][stage]["outs"]
    return [out if isinstance(out, str) else next(iter(out)) for out in outs]


def minutes_seconds(seconds: float) -> str:
    """``"60 s (1 min 0 s)"``: rounded once, so 59.6 s does not read "0 min 60 s"."""
    whole = round(seconds)
    return f"{whole} s ({whole // 60} min {whole % 60} s)"


def peak_rss_gb(time_v: str) -> float:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_v)
    return int(m.group(1)) / 1024**2 if m else float("nan")


class TreeMemory(threading.Thread):
    """The largest sums of memory over a process and all its descendants, sampled every
    ``every`` seconds until the process ends: resident sets (`peak_bytes`; pages shared between
    processes, such as torch's libraries, count once per process, so it errs high) and
    proportional sets (`peak_pss_bytes`; a shared page is split between the processes that map
    it: what the run holds of the machine's memory)."""

    def __init__(self, pid: int, every: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.every = every
        self.peak_bytes = 0
        self.peak_pss_bytes = 0

    def run(self) -> None:
        while True:
            rss = pss = 0
            try:  # the run may end between any two of these calls
                if self.root.status() == psutil.STATUS_ZOMBIE:
                    break
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            for proc in processes:
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak_bytes = max(self.peak_bytes, rss)
            self.peak_pss_bytes = max(self.peak_pss_bytes, pss)
            time.sleep(self.every)


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="sft", help="the dvc.yaml stage to reproduce")
    parser.add_argument("--cached", nargs="*", default=[], help="stages restored from the cache")
    parser.add_argument(
        "--retrain", nargs="*", default=[], help="stages whose committed outputs are deleted first"
    )
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is logged)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    venv = ROOT / ".venv"
    env = {**os.environ, **ENV, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    work = Path(tempfile.mkdtemp(prefix="aot_repro_"))
    clone = work / "aot"
    try:
        sh(["git", "clone", "-q", str(ROOT), str(clone)], work, env)
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True
        ).stdout.strip()
        (clone / ".venv").symlink_to(venv)
        if args.cached:
            here = str(ROOT / ".dvc" / "cache")
            sh(["dvc", "remote", "add", "--local", "here", here], clone, env)
            sh(["dvc", "fetch", "-r", "here", *args.cached], clone, env)
            sh(["dvc", "checkout", *args.cached], clone, env)
            sh(["dvc", "remote", "remove", "--local", "here"], clone, env)
        for stage in args.retrain:
            for out in map(clone.joinpath, stage_outs(clone / "dvc.yaml", stage)):
                if out.is_dir():
                    shutil.rmtree(out)
                else:
                    out.unlink(missing_ok=True)
        time_log = work / "time.txt"
        start = time.perf_counter()
        proc = subprocess.Popen(
            ["/usr/bin/time", "-v", "-o", str(time_log), "dvc", "repro", args.target],
            cwd=clone,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        memory = TreeMemory(proc.pid)
        memory.start()
        lines = []
        for line in proc.stdout:
            lines.append((time.perf_counter() - start, line))
            logger.info(line.rstrip("\n"))
        rc = proc.wait()
        wall = time.perf_counter() - start
        peak = peak_rss_gb(time_log.read_text())
        memory.join(timeout=5)
        together = memory.peak_bytes / 1024**3
        proportional = memory.peak_pss_bytes / 1024**3
    finally:
        if args.keep:
            logger.info("clone kept at %s", clone)
        else:
            shutil.rmtree(work, ignore_errors=True)

    cached = ", ".join(args.cached) or "none"
    retrained = ", ".join(args.retrain) or "none"
    rows = stage_times(lines, wall)
    skipped = [
        m.group(1) for _, line in lines if (m := re.match(r"Stage '([^']+)' didn't change", line))
    ]
    report = [
        f"`dvc repro {args.target}` on a fresh clone of {commit} (`.venv` linked), "
        f"{os.cpu_count()} cores; stages restored from the DVC cache first: {cached}; "
        f"committed outputs deleted first: {retrained}",
        "",
        "| stage | wall time |",
        "|---|---|",
        *[f"| {name} | {minutes_seconds(secs)} |" for name, secs in rows],
        *[f"| {name} | skipped (up to date) |" for name in skipped],
        f"| **total** | **{minutes_seconds(wall)}**, "
        f"peak RSS {peak:.2f} GB (one process), {together:.2f} GB (all processes at once; "
        f"proportional set {proportional:.2f} GB), exit {rc} |",
    ]
    suffix = "".join(f"_cached_{s}" for s in args.cached)
    suffix += "".join(f"_retrained_{s}" for s in args.retrain)
    out = ROOT / "benchmarks" / "results" / f"repro_{args.target}{suffix}.md"
    write_report(out, "\n".join(report))
    logger.info("\n".join(report))
    if rc != 0:
        raise SystemExit(rc)


if __name__ == "__main__":
    main()
