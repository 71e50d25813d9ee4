"""The project as users run it: the CLI, environments, config merging and the smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from aot.pipeline_registry import PIPELINE_ORDER, register_pipelines
from aot.pipelines.selfplay.schedule import load_rounds

KEDRO = str(Path(sys.executable).with_name("kedro"))


def _kedro(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.run(
        [KEDRO, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_registry_has_every_pipeline_and_a_default_that_runs_them_all() -> None:
    pipelines = register_pipelines()
    assert set(PIPELINE_ORDER) <= set(pipelines)
    everything = set().union(*(pipelines[name].nodes for name in PIPELINE_ORDER))
    assert set(pipelines["__default__"].nodes) == everything


def test_kedro_registry_list_names_the_pipelines(project_copy: Path) -> None:
    result = _kedro(project_copy, "registry", "list")
    assert result.returncode == 0, result.stderr
    for name in PIPELINE_ORDER:
        assert name in result.stdout


def test_environments_soft_merge_single_keys(project_copy: Path) -> None:
    from kedro.config import OmegaConfigLoader

    from aot.settings import CONFIG_LOADER_ARGS

    def params(env: str) -> dict:
        loader = OmegaConfigLoader(str(project_copy / "conf"), env=env, **CONFIG_LOADER_ARGS)
        return loader["parameters"]

    base, smoke, paper = params("base"), params("smoke"), params("paper")
    assert smoke["defender"]["tiny"]["hidden_size"] < base["defender"]["tiny"]["hidden_size"]
    # a key the smoke env does not mention survives the merge
    assert smoke["defender"]["tiny"]["vision_depth"] == base["defender"]["tiny"]["vision_depth"]
    assert smoke["world"]["image_size"] == base["world"]["image_size"]
    assert (
        paper["defender"]["source"] == "pretrained"
        and paper["defender"]["tiny"] == base["defender"]["tiny"]
    )
    # the tiny default's dense Attacker reward must not leak into the paper's (all K wrong)
    base_reward, paper_reward = (e["selfplay"]["attacker"]["reward"] for e in (base, paper))
    assert base_reward["confidence"] is True and base_reward["graded"] is True
    assert paper_reward["confidence"] is False and paper_reward["graded"] is False


def _leaves(tree: object, key: str, path: str = "") -> dict[str, object]:
    """Every value stored under ``key`` anywhere in a nested parameter dict, by dotted path."""
    out: dict[str, object] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            here = f"{path}.{k}" if path else str(k)
            out.update({here: v} if k == key else _leaves(v, key, here))
    return out


def test_paper_env_answers_with_letters_and_lets_the_defender_judge_edits(
    project_copy: Path,
) -> None:
    """One answer mode per environment: a Defender taught letters in `sft` is rewarded, filtered
    and evaluated on letters too; and on real images the Defender judges edit validity (the
    world's pixel tests know only the world's shapes)."""
    from kedro.config import OmegaConfigLoader

    from aot.rewards.attack import AttackRewardConfig
    from aot.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(str(project_copy / "conf"), env="paper", **CONFIG_LOADER_ARGS)
    paper = loader["parameters"]
    modes = _leaves(paper, "answer_mode")
    assert len(modes) >= 8 and set(modes.values()) == {"letter"}, modes
    base = OmegaConfigLoader(str(project_copy / "conf"), env="base", **CONFIG_LOADER_ARGS)
    rewards = _leaves(base["parameters"], "reward")
    assert len(rewards) >= 4
    for path in rewards:
        node: object = paper
        for part in path.split("."):
            node = node[part]  # type: ignore[index]
        config = AttackRewardConfig.from_dict(node)  # type: ignore[arg-type]
        assert config.validity_judge == "defender" and config.answer_mode == "letter", path
        assert config.validity_checks == ("colour",)  # base's keys survive the soft merge


def test_a_pipeline_run_before_its_inputs_exist_names_what_to_run(project_copy: Path) -> None:
    result = _kedro(project_copy, "run", "--env", "smoke", "--pipelines", "evaluation")
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Error: Pipeline ['evaluation'] cannot start" in output
    assert "kedro run --pipelines bootstrap_dataset" in output
    assert "kedro run --pipelines sft" in output
    assert "Loading" not in output  # it stopped before any model work
    assert "Traceback" not in output  # the message alone, not Kedro's, click's and pluggy's frames


def test_bad_parameters_on_the_command_line_are_listed_alone(project_copy: Path) -> None:
    overrides = "selfplay.attacker.steps=-3,selfplay.attacker.lr=abc,selfplay.defender.max_steps=0"
    result = _kedro(
        project_copy, "run", "--env", "smoke", "--pipelines", "selfplay", "--params", overrides
    )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Error: 3 invalid parameter(s); nothing was run:" in output
    for line in (
        "--params: selfplay.attacker.steps must be an integer in [1, inf], got -3",
        "--params: selfplay.attacker.lr must be a number > 0, got 'abc'",
        "--params: selfplay.defender.max_steps must be",
    ):
        assert line in output
    assert "Traceback" not in output and "Loading" not in output


@pytest.mark.slow
def test_smoke_run_writes_every_declared_output(smoke_project: Path) -> None:
    project_copy = smoke_project  # the session's `kedro run --env smoke` (conftest.py)
    root = project_copy / "data" / "smoke"
    for name, raw in _catalog_paths(project_copy, str(root)).items():
        path = Path(raw)
        assert path.exists(), f"{name} was not written to {path}"
    metrics = json.loads((root / "08_reporting" / "evaluation" / "clean_metrics.json").read_text())
    assert set(metrics["accuracy"]) == {"spatial", "attribute", "count", "existence", "overall"}
    records = pd.read_parquet(root / "02_intermediate" / "extended" / "records.parquet")
    assert metrics["n"]["overall"] == min(32, int((records["split"] == "test").sum()))
    pairs = pd.read_parquet(root / "05_model_input" / "aot_sft" / "pairs.parquet")
    assert {
        "image",
        "edited_image",
        "distractor_box",
        "distractor_prompt",
        "edit_kind",
        "effective",
    } <= set(pairs.columns)
    from aot.attacker import BoxEditPipeline
    from aot.defender import Defender

    assert Defender.from_pretrained(root / "06_models" / "defender_sft").num_parameters() > 0
    assert isinstance(
        BoxEditPipeline.from_pretrained(root / "06_models" / "attacker_cold"), BoxEditPipeline
    )
    assert (
        project_copy / "data" / "01_raw"
    ).exists() is False  # smoke never writes the default paths
    by_round = pd.read_csv(root / "08_reporting" / "evaluation" / "robustness_by_round.csv")
    assert list(by_round.columns) == [
        "model",
        "series",
        "round",
        "suite",
        "family",
        "protocol",
        "accuracy",
        "n",
    ]
    rounds = load_rounds(project_copy / "conf" / "base" / "selfplay_schedule.yml")
    firsts = by_round.drop_duplicates("model").set_index("model")
    placed = {m: (row["series"], row["round"]) for m, row in firsts.iterrows()}
    assert placed == {
        "base": ("aot", 0),
        **{f"aot_{name}": ("aot", k) for k, name in enumerate(rounds, start=1)},
        "clean_rl": ("clean_rl", len(rounds)),
        "static_aug": ("static_aug", len(rounds)),
    }
    evaluation = json.loads((root / "08_reporting" / "evaluation" / "metrics.json").read_text())
    for row in by_round[by_round["family"] == "overall"].itertuples():
        key = f"{row.model}/{row.suite}/{row.protocol}/accuracy/overall"
        assert row.accuracy == pytest.approx(evaluation[key])
        assert row.n == evaluation[f"{row.model}/{row.suite}/{row.protocol}/n/overall"]


def _catalog_paths(project: Path, data_root: str = "data") -> dict[str, str]:
    """Every catalog path, with the self-play factories expanded for each scheduled round."""
    catalog = yaml.safe_load((project / "conf" / "base" / "catalog.yml").read_text())
    rounds = load_rounds(project / "conf" / "base" / "selfplay_schedule.yml")
    out = {}
    for name, entry in catalog.items():
        path = (entry.get("filepath") or entry["path"]).replace("${globals:data_root}", data_root)
        if "{name}" in name:
            for baseline in ("clean_rl", "static_aug"):
                out[name.replace("{name}", baseline)] = path.replace("{name}", baseline)
            continue
        if "{model}" in name:
            for model in ["base", "clean_rl", "static_aug", *(f"aot_{r}" for r in rounds)]:
                out[name.replace("{model}", model)] = path.replace("{model}", model)
            continue
        if "{attacker}" in name:
            for attacker in ["cold", *rounds]:
                out[name.replace("{attacker}", attacker)] = path.replace("{attacker}", attacker)
            continue
        for round_name in rounds if "{round}" in name else [None]:
            key = name.replace("{round}", round_name) if round_name else name
            out[key] = path.replace("{round}", round_name) if round_name else path
    return out


def _under(path: str, folders: list[str]) -> bool:
    """Whether ``path`` is one of ``folders`` (DVC paths) or lies inside one."""
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def test_every_persisted_dataset_is_tracked_by_a_dvc_stage(dvc_stages) -> None:  # noqa: ANN001
    root = Path(__file__).resolve().parents[1]
    stages = dvc_stages(root)
    tracked: list[str] = []
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                tracked.append(entry if isinstance(entry, str) else next(iter(entry)))
    for name, path in _catalog_paths(root).items():
        assert _under(path, tracked), f"{name} ({path}) is in no DVC stage"


def test_every_image_folder_is_saved_whole() -> None:
    """The README says image folders are written next to their place and swapped in: a plain
    `partitions.PartitionedDataset` deletes the old folder first and writes file by file."""
    root = Path(__file__).resolve().parents[1]
    plain = [
        f"{catalog_file.relative_to(root)}: {name} is {entry['type']}"
        for catalog_file in sorted((root / "conf").glob("*/catalog*.yml"))
        for name, entry in (yaml.safe_load(catalog_file.read_text()) or {}).items()
        if isinstance(entry, dict) and "PartitionedDataset" in str(entry.get("type", ""))
    ]
    assert not plain, plain


def _stage_slice(cmd: str, pipelines: dict):  # noqa: ANN202
    """The part of the registered ``pipelines`` that a stage's `kedro run` command runs."""
    words = cmd.split()
    args = words[words.index("kedro") + 2 :]
    opts = {args[k]: args[k + 1] for k in range(len(args) - 1) if args[k].startswith("--")}
    pipeline = pipelines[opts["--pipelines"]]
    if "--tags" in opts:
        pipeline = pipeline.only_nodes_with_tags(*opts["--tags"].split(","))
    if "--namespaces" in opts:
        pipeline = pipeline.only_nodes_with_namespaces(opts["--namespaces"].split(","))
    if "--nodes" in opts:
        pipeline = pipeline.only_nodes(*opts["--nodes"].split(","))
    return pipeline


def _has_key(tree: object, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def test_every_dvc_stage_tracks_the_parameters_and_data_its_nodes_read(dvc_stages) -> None:  # noqa: ANN001
    """A parameter or dataset a stage's nodes read but its `params` or `deps` miss would leave
    the stage cached, and stale, when only that input changes."""
    root = Path(__file__).resolve().parents[1]
    paths, pipelines = _catalog_paths(root), register_pipelines()
    for name, stage in dvc_stages(root).items():
        pipeline = _stage_slice(stage["cmd"], pipelines)
        assert pipeline.nodes, f"{name}: its command runs no node"
        inputs = pipeline.inputs()
        assert "parameters" not in inputs, f"{name}: a node reads every parameter"
        listed = [
            (key, yaml.safe_load((root / file).read_text()))
            for entry in stage.get("params", [])
            for file, keys in entry.items()
            for key in keys
        ]
        for param in sorted(i.removeprefix("params:") for i in inputs if i.startswith("params:")):
            assert any(
                (param == key or param.startswith(key + ".")) and _has_key(conf, param)
                for key, conf in listed
            ), f"{name}: reads params:{param}, which dvc.yaml's params for it do not track"
        deps = stage.get("deps", [])
        for dataset in sorted(i for i in inputs if not i.startswith("params:")):
            path = paths.get(dataset)
            assert path and _under(path, deps), (
                f"{name}: reads {dataset} ({path}), which is not among its deps"
            )


def test_every_dvc_stage_tracks_what_its_nodes_write(dvc_stages) -> None:  # noqa: ANN001
    """Each dataset the nodes of a stage's kedro command save lies under that stage's own outs,
    metrics or plots (not merely some stage's), so DVC caches and restores it with the stage."""
    root = Path(__file__).resolve().parents[1]
    paths, pipelines = _catalog_paths(root), register_pipelines()
    for name, stage in dvc_stages(root).items():
        tracked = [
            entry if isinstance(entry, str) else next(iter(entry))
            for key in ("outs", "metrics", "plots")
            for entry in stage.get(key, [])
        ]
        slice_ = _stage_slice(stage["cmd"], pipelines)
        written = {out for node in slice_.nodes for out in node.outputs}
        for dataset in sorted(written & set(paths)):
            path = paths[dataset]
            assert _under(path, tracked), (
                f"{name}: writes {dataset} ({path}), which is not among its outs"
            )


def test_dvc_stages_run_the_registered_pipelines_in_order(dvc_stages) -> None:  # noqa: ANN001
    root = Path(__file__).resolve().parents[1]
    stages = dvc_stages(root)
    for name, stage in stages.items():
        pipeline = stage["cmd"].split("--pipelines ")[1].split()[0]
        if "@" in name:
            assert f"--namespaces selfplay.{name.split('@')[1]}" in stage["cmd"]
        assert pipeline in PIPELINE_ORDER, f"stage {name} runs unknown pipeline {pipeline}"
        assert "--env base" in stage["cmd"]
    assert list(stages) == [
        "source_data",
        "base_defender",
        "bootstrap_dataset",
        "sft",
        "selfplay@round_1",
        "selfplay@round_2",
        "selfplay@round_3",
        "selfplay_summary",
        "baselines",
        "evaluation",
    ]


def test_schedule_rounds_chain_the_previous_rounds_models() -> None:
    """The schedule (read by both Kedro and DVC) starts round k from round k-1's outputs."""
    root = Path(__file__).resolve().parents[1]
    schedule = yaml.safe_load((root / "conf" / "base" / "selfplay_schedule.yml").read_text())
    paths = _catalog_paths(root)
    previous = {"attacker": paths["cold_attacker"], "defender": paths["sft_defender"]}
    rounds = load_rounds(root / "conf" / "base" / "selfplay_schedule.yml")
    assert list(schedule["rounds"]) == rounds
    for name in rounds:
        assert schedule["rounds"][name] == previous, name
        previous = {
            "attacker": paths[f"selfplay.{name}.attacker"],
            "defender": paths[f"selfplay.{name}.defender"],
        }
    pipeline = register_pipelines()["selfplay"]
    namespaces = {n.namespace for n in pipeline.nodes if n.namespace} - {"selfplay"}
    assert namespaces == {f"selfplay.{name}" for name in rounds}
    for k, name in enumerate(rounds[1:], start=1):
        inputs = {i for n in pipeline.nodes if n.namespace == f"selfplay.{name}" for i in n.inputs}
        assert {
            f"selfplay.{rounds[k - 1]}.attacker",
            f"selfplay.{rounds[k - 1]}.defender",
        } <= inputs


def test_paper_env_links_the_checkpoint_instead_of_copying(
    project_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In `paper` the initial Defender is a reference to the local checkpoint, passed through."""
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    from aot.datasets import ModelFolder
    from aot.pipelines.bootstrap_dataset.defender_nodes import (
        build_initial_defender,
        pretrain_defender,
    )
    from aot.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(str(project_copy / "conf"), env="paper", **CONFIG_LOADER_ARGS)
    checkpoint = tmp_path / "Qwen2.5-VL-7B-Instruct"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    params = loader["parameters"]
    params["defender"]["path"] = str(checkpoint)
    catalog_config = loader["catalog"]
    monkeypatch.chdir(project_copy)
    catalog = DataCatalog.from_config(catalog_config)
    reference = build_initial_defender(params["defender"], params["world"], seed=0)
    catalog.save("initial_defender", reference)
    assert (project_copy / "data" / "06_models" / "defender_initial").is_symlink()
    loaded = catalog.load("initial_defender")
    assert isinstance(loaded, ModelFolder)
    base, _, metrics = pretrain_defender(loaded, None, None, None, params["pretrain"], seed=0)  # type: ignore[arg-type]
    assert base is loaded and metrics == {"pretrained": False}


def test_one_round_before_the_previous_one_names_the_round_to_run(project_copy: Path) -> None:
    result = _kedro(
        project_copy,
        "run",
        "--env",
        "smoke",
        "--pipelines",
        "selfplay",
        "--namespaces",
        "selfplay.round_2",
    )
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())
    assert "--namespaces selfplay.round_1" in output
    assert "dvc repro selfplay@round_1" in output
    assert "Loading" not in output


@pytest.mark.slow
def test_kedro_viz_shows_rounds_as_groups_and_layers(viz_build: Path) -> None:
    project_copy = viz_build  # the session's `kedro viz build` (conftest.py)
    main = json.loads((project_copy / "build" / "api" / "main").read_text())
    groups = set(main["modular_pipelines"])
    rounds = load_rounds(project_copy / "conf" / "base" / "selfplay_schedule.yml")
    assert {f"selfplay.{name}" for name in rounds} <= groups
    layers = main["layers"]  # empty when the layers' order has a cycle
    assert layers.index("raw") < layers.index("base_models") < layers.index("model_input")
    assert layers.index("models") < layers.index("selfplay") < layers.index("reporting")
    names = {n["name"] for n in main["nodes"]}
    assert "selfplay.round_2.train_defender" in names or any("train_defender" in n for n in names)
