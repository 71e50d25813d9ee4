"""Same seed, same numbers, and the same bytes in every file a run writes; another seed, other
numbers (issue 8). And the seeds command end to end on smoke.

Two smoke runs are compared: the session's shared `kedro run --env smoke` (``smoke_project``,
the configured seed 42) and the seeds command's runs for seeds 42 and 43 (each its own
``kedro run --env smoke --params seed=N`` into ``data/smoke/seeds/seed_N/``). The same two runs
feed the seeds command's test, so it costs no extra pipeline run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORTS = Path("08_reporting")
# Every JSON report of the run: evaluation, plus the training and self-play numbers behind it
# (losses, weight fingerprints), so a match is not only a match of zero accuracies.
SAME_SEED_FILES = [
    "evaluation/metrics.json",
    "evaluation/clean_metrics.json",
    "bootstrap/pretrain_metrics.json",
    "sft/defender_metrics.json",
    "sft/attacker_metrics.json",
    "selfplay/round_1/metrics.json",
    "selfplay/round_3/metrics.json",
]


@pytest.fixture(scope="module")
def smoke_seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `make seeds ENV=smoke SEEDS="42 43"` runs, on a copy of the project."""
    project = tmp_path_factory.mktemp("smoke_seeds")
    for name in ("conf", "pyproject.toml", ".telemetry"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, project / name, ignore=shutil.ignore_patterns("local"))
        else:
            shutil.copy(src, project / name)
    for folder in ("conf/local", "src", "data"):
        (project / folder).mkdir(exist_ok=True)
    args = ["-m", "aot.evaluation.seeds", "run", "--env", "smoke", "--seeds", "42", "43"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, *args], cwd=project, env=env, capture_output=True, text=True, timeout=1800
    )
    if result.returncode != 0:
        pytest.fail("the seeds command failed:\n" + result.stdout[-3000:] + result.stderr[-3000:])
    return project


def _seed_reports(project: Path, seed: int) -> Path:
    return project / "data" / "smoke" / "seeds" / f"seed_{seed}" / REPORTS


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_other_metrics(
    smoke_project: Path, smoke_seeds: Path
) -> None:
    plain = smoke_project / "data" / "smoke" / REPORTS
    same, other = _seed_reports(smoke_seeds, 42), _seed_reports(smoke_seeds, 43)
    for name in SAME_SEED_FILES:
        assert (same / name).read_bytes() == (plain / name).read_bytes(), (
            f"{name} differs between two smoke runs with seed 42"
        )
    first = json.loads((plain / "evaluation" / "metrics.json").read_text())
    second = json.loads((other / "evaluation" / "metrics.json").read_text())
    assert first != second, "seed 43 gave the same evaluation metrics as seed 42"
    # not only the held-out sample changed: the models trained differently too
    fingerprints = [
        json.loads((reports / "selfplay" / "round_1" / "metrics.json").read_text())["fingerprints"]
        for reports in (plain, other)
    ]
    assert fingerprints[0]["attacker_out"] != fingerprints[1]["attacker_out"]
    losses = [
        json.loads((reports / "sft" / "defender_metrics.json").read_text())["train_loss"]
        for reports in (plain, other)
    ]
    assert losses[0] != losses[1]


# Trainer checkpoints are resume state, not results: TRL's `trainer_state.json` keeps wall-clock
# times. Everything else a run writes is the seed's alone.
RESUME_STATE = "selfplay_checkpoints"


def _written_files(data_root: Path) -> dict[str, bytes]:
    """Every file in the data layers (``01_raw`` to ``08_reporting``) but resume state."""
    files = {}
    for layer in sorted(data_root.glob("0[1-8]_*")):
        for path in sorted(layer.rglob("*")):
            name = path.relative_to(data_root)
            if path.is_file() and RESUME_STATE not in name.parts:
                files[str(name)] = path.read_bytes()
    return files


@pytest.mark.slow
def test_same_seed_writes_every_output_byte_for_byte(
    smoke_project: Path, smoke_seeds: Path
) -> None:
    """Not only the metrics: models, tables, images, plots and training logs (no wall-clock
    columns in them), so `dvc repro` of an unchanged project leaves git's tree clean."""
    plain = _written_files(smoke_project / "data" / "smoke")
    same = _written_files(_seed_reports(smoke_seeds, 42).parent)
    assert len(plain) > 100 and any(name.endswith("_log.csv") for name in plain)
    assert sorted(same) == sorted(plain)
    differing = sorted(name for name in plain if same[name] != plain[name])
    assert not differing, f"files that differ between two smoke runs with seed 42: {differing}"


@pytest.mark.slow
def test_seeds_command_writes_mean_and_spread_per_model_suite_protocol(smoke_seeds: Path) -> None:
    out = smoke_seeds / "data" / "smoke" / REPORTS / "seeds"
    summary = pd.read_csv(out / "summary.csv", dtype={"seeds": str, "values": str})
    per_seed = {
        seed: json.loads(
            (_seed_reports(smoke_seeds, seed) / "evaluation" / "metrics.json").read_text()
        )
        for seed in (42, 43)
    }
    # the paired attack metrics exist where a smoke Defender answers some clean question right
    paired = {"attack_success/overall", "fooled/overall", "pairs/overall"}
    paired |= {f"common_{m}" for m in paired}  # on the questions every model answers right
    assert {"accuracy/overall", "parsed/overall"} <= set(summary["metric"])
    assert set(summary["metric"]) <= {"accuracy/overall", "parsed/overall"} | paired
    expected_models = {
        "base",
        "clean_rl",
        "static_aug",
        "aot_round_1",
        "aot_round_2",
        "aot_round_3",
    }
    assert set(summary["model"]) == expected_models
    assert {"clean", "unseen_blur", "unseen_crop"} <= set(summary["suite"])
    assert set(summary["protocol"]) == {"greedy", "strict"}
    for row in summary.itertuples():
        key = f"{row.model}/{row.suite}/{row.protocol}/{row.metric}"
        values = [per_seed[s][key] for s in (42, 43) if key in per_seed[s]]
        assert row.n_seeds == len(values) and row.seeds.split() == [
            str(s) for s in (42, 43) if key in per_seed[s]
        ]
        assert row.mean == pytest.approx(sum(values) / len(values))
        spread = abs(values[0] - values[1]) / math.sqrt(2) if len(values) == 2 else 0.0
        assert row.std == pytest.approx(spread)
        assert (row.min, row.max) == (min(values), max(values))
    clean = summary[(summary["suite"] == "clean") & (summary["metric"] == "accuracy/overall")]
    assert (clean["n_seeds"] == 2).all()  # the clean suite exists under every seed
    report = (out / "summary.md").read_text()
    assert "seeds 42, 43" in report and "## greedy" in report and "| clean |" in report
    # every seed ran the whole default pipeline into its own folder, never the default one
    for seed in (42, 43):
        assert (
            _seed_reports(smoke_seeds, seed) / "evaluation" / "robustness_by_round.csv"
        ).exists()
    assert not (smoke_seeds / "data" / "smoke" / REPORTS / "evaluation").exists()
