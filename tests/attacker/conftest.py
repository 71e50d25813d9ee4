"""Attacker fixtures: a tiny editor (its config, `tiny_config`, is in tests/conftest.py) and a
sample scene."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from aot.attacker import AttackerConfig, BoxEditPipeline, build_box_edit_pipeline
from aot.world import Scene, WorldConfig, sample_scene


@pytest.fixture(scope="session")
def tiny_pipe(tiny_config: AttackerConfig) -> BoxEditPipeline:
    """Random weights, never trained: tests may only read it (train on a fresh build)."""
    return build_box_edit_pipeline(tiny_config, seed=0)


@pytest.fixture(scope="session")
def default_pipe() -> BoxEditPipeline:
    return build_box_edit_pipeline(AttackerConfig(), seed=0)


@pytest.fixture(scope="session")
def scene() -> Scene:
    return sample_scene(np.random.default_rng(3), WorldConfig(), "test_scene")


@pytest.fixture(scope="session")
def image(scene: Scene) -> Image.Image:
    return scene.render()


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Small CPU models run fastest on one thread, and 2 threads crawl when a core is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
