"""Several seeds: the aggregation (hand-made metrics), the per-seed command and config, and the
`make seeds` target. The end-to-end run on smoke is in tests/test_determinism.py."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from aot.evaluation import aggregate_seeds
from aot.evaluation.seeds import (
    SUMMARY_COLUMNS,
    env_data_root,
    kedro_command,
    seed_conf,
    seed_root,
    split_key,
    summarize_seeds,
    summary_markdown,
)
from aot.evaluation.suites import as_flat

ROOT = Path(__file__).resolve().parents[2]

BY_SEED = {
    42: {
        "base/clean/greedy/accuracy/overall": 0.5,
        "base/clean/greedy/accuracy/spatial": 0.1,  # not a key metric: left out
        "base/clean/greedy/n/overall": 16,
        "aot_round_1/attacked_cold/strict/accuracy/overall": 0.25,
    },
    43: {
        "base/clean/greedy/accuracy/overall": 0.7,
        "base/clean/greedy/n/overall": 16,
        "aot_round_1/attacked_cold/strict/accuracy/overall": 0.75,
    },
    # nested, like a metrics dict before flattening; lacks the aot_round_1 metric
    44: {"base": {"clean": {"greedy": {"accuracy": {"overall": 0.9}, "n": {"overall": 16}}}}},
}


def test_summarize_seeds_mean_std_min_max() -> None:
    table = summarize_seeds(BY_SEED, metrics=("accuracy/overall",))
    assert list(table.columns) == SUMMARY_COLUMNS
    rows = table.set_index(["model", "suite", "protocol", "metric"])
    base = rows.loc[("base", "clean", "greedy", "accuracy/overall")]
    assert base["n_seeds"] == 3
    assert base["mean"] == pytest.approx(0.7)
    assert base["std"] == pytest.approx(0.2)  # sample std: sqrt((0.04 + 0 + 0.04) / 2)
    assert (base["min"], base["max"]) == (0.5, 0.9)
    assert base["seeds"] == "42 43 44" and base["values"] == "0.5 0.7 0.9"
    aot = rows.loc[("aot_round_1", "attacked_cold", "strict", "accuracy/overall")]
    assert aot["n_seeds"] == 2 and aot["mean"] == pytest.approx(0.5)
    assert aot["std"] == pytest.approx(math.sqrt(0.125))
    assert len(table) == 2  # accuracy/spatial and n/overall are not asked for
    with_n = summarize_seeds(BY_SEED, metrics=("accuracy/overall", "n/overall"))
    n_row = with_n.set_index("metric").loc["n/overall"]
    assert (n_row["mean"], n_row["std"], n_row["n_seeds"]) == (16.0, 0.0, 3)


def test_flat_metrics_files_keep_their_keys() -> None:
    """A metrics.json is flat: its ``/`` keys must not be sanitised into one level."""
    assert as_flat(BY_SEED[44]) == {
        "base/clean/greedy/accuracy/overall": 0.9,
        "base/clean/greedy/n/overall": 16,
    }
    assert as_flat(BY_SEED[42])["base/clean/greedy/n/overall"] == 16
    agg = aggregate_seeds({s: BY_SEED[s] for s in (42, 43)})
    assert agg["base"]["clean"]["greedy"]["accuracy"]["overall"]["mean"] == pytest.approx(0.6)


def test_summarize_seeds_single_seed_and_nothing() -> None:
    one = summarize_seeds({7: {"base/clean/greedy/accuracy/overall": 0.4}})
    assert one[["n_seeds", "mean", "std", "min", "max"]].iloc[0].tolist() == [1, 0.4, 0, 0.4, 0.4]
    assert summarize_seeds({}).empty
    assert split_key("base/clean/greedy/accuracy/overall") == (
        "base",
        "clean",
        "greedy",
        "accuracy/overall",
    )
    assert split_key("accuracy/overall") is None


def test_summary_markdown_lists_mean_std_and_range() -> None:
    text = summary_markdown(summarize_seeds(BY_SEED))
    assert "seeds 42, 43, 44" in text
    assert "## greedy" in text and "## strict" in text
    assert "| suite | base |" in text
    assert "| clean | 0.700 ± 0.200 (0.500–0.900) |" in text
    assert "| attacked_cold | 0.500 ± 0.354 (0.250–0.750) [2 of 3 seeds] |" in text


def test_seed_command_and_its_config(tmp_path: Path) -> None:
    assert env_data_root(ROOT / "conf", "base") == "data"
    assert env_data_root(ROOT / "conf", "smoke") == "data/smoke"
    root = seed_root("data/smoke", 43)
    assert root == Path("data/smoke/seeds/seed_43")
    assert kedro_command("kedro", "smoke", root / "conf", 43) == [
        "kedro",
        "run",
        "--env",
        "smoke",
        "--conf-source",
        "data/smoke/seeds/seed_43/conf",
        "--params",
        "seed=43",
    ]
    conf = seed_conf(ROOT / "conf", "smoke", tmp_path / "conf", root.as_posix())
    assert yaml.safe_load((conf / "smoke" / "globals.yml").read_text()) == {
        "data_root": "data/smoke/seeds/seed_43"
    }
    # everything else is the project's config, untouched
    for name in ("base/parameters.yml", "base/catalog.yml", "smoke/parameters.yml"):
        assert (conf / name).read_text() == (ROOT / "conf" / name).read_text()
    base = seed_conf(ROOT / "conf", "base", tmp_path / "conf_base", "data/seeds/seed_1")
    assert yaml.safe_load((base / "base" / "globals.yml").read_text()) == {
        "data_root": "data/seeds/seed_1"
    }
    assert env_data_root(base, "base") == "data/seeds/seed_1"


def test_make_seeds_runs_the_module_with_env_and_seeds() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    dry = subprocess.run(
        ["make", "-n", "seeds", "SEEDS=42 43", "ENV=smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    assert ".venv/bin/python -m aot.evaluation.seeds run --env smoke --seeds 42 43" in dry.stdout


def test_group_means_average_suites_per_seed_then_spread_over_seeds() -> None:
    from aot.evaluation.seeds import group_means, suite_group

    by_seed = {
        1: {
            "m/attacked_cold/greedy/accuracy/overall": 0.2,
            "m/attacked_round_1/greedy/accuracy/overall": 0.4,  # seed 1's attacked mean 0.3
            "m/unseen_blur/greedy/accuracy/overall": 0.5,
            "m/pope_random/greedy/accuracy/overall": 0.9,  # in no group
        },
        2: {
            "m/attacked_cold/greedy/accuracy/overall": 0.6,
            "m/attacked_round_1/greedy/accuracy/overall": 0.4,  # seed 2's attacked mean 0.5
            "m/unseen_blur/greedy/accuracy/overall": 0.5,
        },
    }
    groups = group_means(summarize_seeds(by_seed)).set_index(["model", "group", "protocol"])
    attacked = groups.loc[("m", "attacked", "greedy")]
    assert attacked["mean"] == pytest.approx(0.4)
    assert attacked["std"] == pytest.approx(math.sqrt(0.02))  # of 0.3 and 0.5, ddof=1
    assert [attacked["min"], attacked["max"]] == pytest.approx([0.3, 0.5])
    assert attacked["n_seeds"] == 2
    assert groups.loc[("m", "unseen", "greedy"), "std"] == 0.0
    assert set(groups.index.get_level_values("group")) == {"attacked", "unseen"}
    assert suite_group("clean") == "clean" and suite_group("pope_random") is None
    text = summary_markdown(summarize_seeds(by_seed))
    assert "| attacked | 0.400 ± 0.141 / – |" in text


def test_summary_markdown_pools_paired_attack_success_over_seeds() -> None:
    key = "attacked_pooled/greedy"
    by_seed = {
        seed: {
            f"aot_round_1/{key}/attack_success/overall": fooled / pairs,
            f"aot_round_1/{key}/fooled/overall": fooled,
            f"aot_round_1/{key}/pairs/overall": pairs,
            f"base/{key}/attack_success/overall": 0.5,  # no counts: rate only
        }
        for seed, fooled, pairs in ((42, 1, 10), (43, 3, 10))
    }
    for seed, fooled, pairs in ((42, 1, 8), (43, 1, 8)):
        by_seed[seed] |= {
            f"aot_round_1/{key}/common_attack_success/overall": fooled / pairs,
            f"aot_round_1/{key}/common_fooled/overall": fooled,
            f"aot_round_1/{key}/common_pairs/overall": pairs,
        }
    text = summary_markdown(summarize_seeds(by_seed))
    assert "## attack success, attacked_pooled (paired)" in text
    assert "| greedy | 0.500 ± 0.000 | 0.200 ± 0.141 (4/20) |" in text
    assert "## attack success, attacked_pooled (paired, common questions)" in text
    assert "| greedy | – | 0.125 ± 0.000 (2/16) |" in text
    assert summary_markdown(summarize_seeds(BY_SEED)).count("attack success") == 0
