"""Fixtures shared by the Defender tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

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


@pytest.fixture
def count_vision_calls(monkeypatch) -> Callable[[Any], list[int]]:  # noqa: ANN001
    """``count_vision_calls(defender)``: from then on, the vision tower records how many images
    each of its calls encodes (until ``monkeypatch.undo()`` or the test's end)."""

    def start(defender: Any) -> list[int]:
        visual = defender.model.model.visual
        calls: list[int] = []
        original = type(visual).forward

        def counting(self, hidden_states, grid_thw, **kwargs):  # noqa: ANN001, ANN202
            calls.append(len(grid_thw))
            return original(self, hidden_states, grid_thw, **kwargs)

        monkeypatch.setattr(type(visual), "forward", counting)
        return calls

    return start
