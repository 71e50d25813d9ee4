"""The evaluation's attacked suite rows and the warmed-up Defender, for the answering
benchmarks (`bench_strict_protocol.py`, `bench_shared_prefill.py`). Needs `dvc repro
evaluation` to have written the suites; nothing under data/ changes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from aot.defender import Defender

ROOT = Path(__file__).resolve().parents[1]
DEFENDER = ROOT / "data/06_models/defender_sft"
EVALUATION = ROOT / "data/07_model_output/evaluation"


def load_attacked_suite(rows: int) -> tuple[Defender, pd.DataFrame, dict[str, Path]]:
    """The Defender, the first ``rows`` attacked suite rows (index reset) and every attacked suite
    image file by key; exits with a message naming what is missing."""
    suites_file = EVALUATION / "suites.parquet"
    if not suites_file.is_file() or not DEFENDER.is_dir():
        raise SystemExit(f"needs {suites_file} and {DEFENDER}: run `dvc repro evaluation` first")
    suites = pd.read_parquet(suites_file)
    table = suites[suites["suite"].str.startswith("attacked_")].head(rows).reset_index(drop=True)
    files = {p.stem: p for p in (EVALUATION / "attacked_images").glob("*/*.png")}
    missing = sorted(set(table["image"]) - set(files))
    if missing:
        raise SystemExit(f"suite image {missing[0]!r} is missing under {EVALUATION}")
    return Defender.from_pretrained(DEFENDER), table, files
