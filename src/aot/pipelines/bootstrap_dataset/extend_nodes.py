"""Nodes of bootstrap_dataset, stage 1: scene extension and its checks (aot-method.md 2.2)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from PIL import Image

from aot.bootstrap import (
    CheckConfig,
    check_scenes,
    extend_scenes,
    make_filler,
    remap_records,
    scenes_from_table,
    summarize_checks,
    verify_answers,
)
from aot.world import WorldConfig

logger = logging.getLogger(__name__)


def extend_source_scenes(
    scenes: pd.DataFrame,
    records: pd.DataFrame,
    images: dict[str, Any],
    extension: dict[str, Any],
    world: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Image.Image], dict[str, Any]]:
    """Places each source scene into a larger canvas, fills the margins, and keeps what passes.

    A scene is kept when it passes the composition, duplication and realism checks; a record is
    kept when its answer, re-derived on the extended graph, is unchanged.
    """
    ratio = float(extension.get("ratio", 1.5))
    clutter = tuple(int(v) for v in extension.get("clutter", (1, 3)))
    world_cfg = WorldConfig.from_dict(world)
    filler = make_filler({"world": world, **extension.get("filler", {"kind": "procedural"})})
    extended = extend_scenes(
        scenes_from_table(scenes), images, records, ratio, filler, clutter, seed, world=world_cfg
    )
    checks = check_scenes(
        extended,
        remap_records(records, {e.scene.scene_id: e.offset for e in extended}),
        CheckConfig.from_dict(extension.get("checks")),
    )
    passed = set(checks.loc[checks["passed"], "scene_id"])
    kept = [e for e in extended if e.scene.scene_id in passed]
    table = pd.DataFrame([e.to_row() for e in kept])
    table = table.merge(scenes[["scene_id", "split"]], on="scene_id", how="left")
    remapped = remap_records(records, {e.scene.scene_id: e.offset for e in kept})
    verified = verify_answers(remapped, {e.scene.scene_id: e.scene for e in kept})
    kept_records = verified[verified["answer_preserved"]].drop(
        columns=["extended_answer", "answer_preserved"]
    )
    if kept_records.empty:
        raise ValueError(
            "scene extension: no record survived the checks; see the logged pass rates"
        )
    report = {
        "n_source_scenes": len(scenes),
        "n_extended_scenes": len(kept),
        "n_records": len(kept_records),
        "pass_rates": summarize_checks(checks),
        "answers_preserved": float(verified["answer_preserved"].mean()),
        "canvas": [int(kept[0].image.width), int(kept[0].image.height)] if kept else None,
    }
    logger.info("Scene extension kept %d of %d scenes", len(kept), len(scenes))
    return (
        table,
        kept_records.reset_index(drop=True),
        {e.scene.scene_id: e.image for e in kept},
        report,
    )
