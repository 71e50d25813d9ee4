"""Fixtures shared by the Defender tests."""

from __future__ import annotations

import json

import pytest

from aot.pipelines.bootstrap_dataset.nodes import generate_source_scenes
from aot.world import Scene

WORLD = {"image_size": 112, "min_objects": 2, "max_objects": 3, "backgrounds": {"plain": 1.0}}


@pytest.fixture(scope="session")
def world() -> tuple:
    """24 small plain-background scenes: their records, images and scene graphs."""
    scenes, records, images = generate_source_scenes(WORLD, {"n_scenes": 24}, seed=1)
    graphs = {
        sid: Scene.from_dict(json.loads(g))
        for sid, g in zip(scenes["scene_id"], scenes["graph"], strict=True)
    }
    return records, images, graphs
