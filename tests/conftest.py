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
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

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


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of the project's configuration in a temporary folder, so runs never touch data/."""
    for name in ("conf", "pyproject.toml", ".telemetry"):
        src = PROJECT_ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("local"))
        else:
            shutil.copy(src, tmp_path / name)
    (tmp_path / "conf" / "local").mkdir(exist_ok=True)
    (tmp_path / "src").mkdir()  # kedro wants it; `aot` itself is imported from the editable install
    (tmp_path / "data").mkdir()
    return tmp_path
