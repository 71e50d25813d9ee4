"""Shared fixtures: a small world dataset and its procedural extension, built once per module."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aot.bootstrap import ExtendedScene, ProceduralFiller, extend_scenes, remap_records
from aot.bootstrap.extension import scenes_from_table
from aot.pipelines.bootstrap_dataset.nodes import generate_source_scenes
from aot.world import Scene, WorldConfig

WORLD = {
    "image_size": 112,
    "min_objects": 2,
    "max_objects": 5,
    "backgrounds": {"plain": 1.0, "textured": 1.0, "photo": 1.0},
}


@pytest.fixture(scope="session")
def world_cfg() -> WorldConfig:
    return WorldConfig.from_dict(WORLD)


@pytest.fixture(scope="session")
def source() -> tuple[list[Scene], pd.DataFrame, dict]:
    """40 source scenes with every question family, as the bootstrap_dataset node makes them."""
    scene_table, records, images = generate_source_scenes(WORLD, {"n_scenes": 40}, seed=7)
    return scenes_from_table(scene_table), records, images


@pytest.fixture(scope="session")
def extended(source, world_cfg) -> tuple[list[ExtendedScene], pd.DataFrame]:  # noqa: ANN001
    """The source extended at ratio 1.5 with the procedural filler, and the remapped records."""
    scenes, records, images = source
    filler = ProceduralFiller(world_cfg)
    out = extend_scenes(scenes, images, records, 1.5, filler, (1, 3), seed=0, world=world_cfg)
    remapped = remap_records(records, {e.scene.scene_id: e.offset for e in out})
    return out, remapped


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(123)
