"""Shared fixtures. Everything is offline: tiny models are built from configs, never downloaded."""

from __future__ import annotations

import os

for _var, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("DO_NOT_TRACK", "1"),
    ("KEDRO_DISABLE_TELEMETRY", "true"),
    ("DVC_NO_ANALYTICS", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("OMP_WAIT_POLICY", "PASSIVE"),
):
    os.environ.setdefault(_var, _value)

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]

CORPUS = [
    "What colour is the circle?",
    "Where is the red circle relative to the blue square?",
    "How many stars are there?",
    "Is there a green hexagon in the image?",
    "left right above below red green blue yellow purple orange Yes No 0 1 2 3 4 5",
]


@pytest.fixture(scope="session")
def tiny_defender_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Qwen2.5-VL Defender folder, built once per test session."""
    from aot.defender import TinyDefenderConfig, build_tiny_defender
    from aot.pipelines.bootstrap_dataset.defender_nodes import defender_corpus

    path = tmp_path_factory.mktemp("defender") / "tiny"
    config = TinyDefenderConfig(
        hidden_size=64, intermediate_size=128, vision_hidden_size=32, vocab_size=400
    )
    corpus = defender_corpus({"image_size": 112}, n_scenes=20)
    build_tiny_defender(config, corpus, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_config():  # noqa: ANN201
    """A tiny box-edit Attacker config (`aot.attacker.AttackerConfig`): tests train in seconds."""
    from aot.attacker import AttackerConfig

    return AttackerConfig(
        crop_size=16, block_out_channels=(8, 16), attention_head_dim=8, norm_num_groups=4
    )


@pytest.fixture(scope="session")
def random_planner():  # noqa: ANN201
    """``random_planner(seed)``: an edit planner (add and replace) with random weights. A fresh
    planner's heads start at zero, so copies of it could not be told apart, nor plan differently."""
    import torch

    from aot.attacker import EditPlanner, PlannerConfig

    def build(seed: int) -> EditPlanner:
        torch.manual_seed(seed)
        planner = EditPlanner(PlannerConfig(edit_kinds=("add", "replace")))
        for p in planner.parameters():
            torch.nn.init.normal_(p, std=0.05)
        return planner

    return build


def _copy_project(dest: Path) -> Path:
    """The project's configuration copied into ``dest``, so runs there never touch data/."""
    for name in ("conf", "pyproject.toml", ".telemetry"):
        src = PROJECT_ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("local"))
        else:
            shutil.copy(src, dest / name)
    (dest / "conf" / "local").mkdir(exist_ok=True)
    (dest / "src").mkdir()  # kedro wants it; `aot` itself is imported from the editable install
    (dest / "data").mkdir()
    return dest


def _kedro_in(cwd: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    kedro = str(Path(sys.executable).with_name("kedro"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.run(
        [kedro, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of the project's configuration in a temporary folder, so runs never touch data/."""
    return _copy_project(tmp_path)


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy on which `kedro run --env smoke` has finished (about a minute and a half),
    shared by every test that only reads the smoke run's outputs (under ``data/smoke/``)."""
    root = _copy_project(tmp_path_factory.mktemp("smoke_project"))
    result = _kedro_in(root, "run", "--env", "smoke")
    if result.returncode != 0:
        pytest.fail(
            "`kedro run --env smoke` failed:\n" + result.stdout[-3000:] + result.stderr[-3000:]
        )
    return root


@pytest.fixture(scope="session")
def viz_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy with the static Kedro-Viz site built by `kedro viz build` in ``build/``."""
    root = _copy_project(tmp_path_factory.mktemp("viz_project"))
    result = _kedro_in(root, "viz", "build", timeout=600)
    if result.returncode != 0:
        pytest.fail("`kedro viz build` failed:\n" + result.stdout[-2000:] + result.stderr[-2000:])
    return root


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files for people to look at (screenshots, executed notebooks):
    ``$AOT_TEST_ARTIFACTS`` or ``build/test-artifacts/`` (git-ignored)."""
    path = Path(os.environ.get("AOT_TEST_ARTIFACTS", PROJECT_ROOT / "build" / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _dvc_stages(root: Path) -> dict[str, dict]:
    """dvc.yaml's stages with `foreach` expanded the way DVC does (`name@key`)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    schedule = yaml.safe_load((root / "conf" / "base" / "selfplay_schedule.yml").read_text())
    out: dict[str, dict] = {}
    for name, stage in stages.items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        assert stage["foreach"] == "${rounds}"
        for key, item in schedule["rounds"].items():
            text = yaml.safe_dump(stage["do"]).replace("${key}", key)
            for field, value in item.items():
                text = text.replace("${item." + field + "}", value)
            out[f"{name}@{key}"] = yaml.safe_load(text)
    return out


@pytest.fixture(scope="session")
def dvc_stages():  # noqa: ANN201
    """``dvc_stages(root)``: the stages of ``root/dvc.yaml``, `foreach` expanded per round."""
    return _dvc_stages
