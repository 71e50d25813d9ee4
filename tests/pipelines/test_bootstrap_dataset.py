"""bootstrap_dataset nodes, and a slice of the pipeline run on an in-memory catalog."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from aot.pipelines.bootstrap_dataset import create_pipeline
from aot.pipelines.bootstrap_dataset.defender_nodes import build_initial_defender, defender_corpus
from aot.pipelines.bootstrap_dataset.extend_nodes import extend_source_scenes
from aot.pipelines.bootstrap_dataset.nodes import generate_source_scenes, plot_world_gallery
from aot.world import Scene, validate_records

WORLD = {"image_size": 112, "min_objects": 2, "max_objects": 4}
SOURCE = {"n_scenes": 20, "splits": {"train": 0.6, "val": 0.2, "test": 0.2}}
TINY = {"hidden_size": 64, "intermediate_size": 128, "vision_hidden_size": 32, "vocab_size": 400}
EXTENSION = {"ratio": 1.5, "clutter": [1, 2]}


@pytest.fixture(scope="module")
def source() -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    return generate_source_scenes(WORLD, SOURCE, seed=3)


@pytest.fixture(scope="module")
def extended(source) -> tuple:  # noqa: ANN001
    return extend_source_scenes(*source, EXTENSION, WORLD, seed=3)


def test_source_scenes_split_by_scene_and_match_the_graph(source) -> None:  # noqa: ANN001
    scenes, records, images = source
    assert len(scenes) == 20 and set(images) == set(scenes["scene_id"])
    assert scenes["split"].value_counts().to_dict() == {"train": 12, "val": 4, "test": 4}
    merged = records.merge(scenes[["scene_id", "split"]], on="scene_id", suffixes=("", "_scene"))
    assert (merged["split"] == merged["split_scene"]).all()
    assert set(records["family"]) == {"spatial", "attribute", "count", "existence"}
    validate_records(records, {k: v.size for k, v in images.items()})
    first = Scene.from_dict(json.loads(scenes["graph"].iloc[0]))
    assert list(first.render().getdata()) == list(images[first.scene_id].getdata())


def test_source_scenes_are_reproducible_from_the_seed(source) -> None:  # noqa: ANN001
    again = generate_source_scenes(WORLD, SOURCE, seed=3)[1]
    other = generate_source_scenes(WORLD, SOURCE, seed=4)[1]
    pd.testing.assert_frame_equal(source[1], again)
    assert not source[1]["question"].equals(other["question"])


def test_bad_source_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="n_scenes"):
        generate_source_scenes(WORLD, {"n_scenes": 0}, seed=0)
    with pytest.raises(ValueError, match="splits"):
        generate_source_scenes(WORLD, {"n_scenes": 4, "splits": {"holdout": 1.0}}, seed=0)
    with pytest.raises(ValueError, match="image_size"):
        generate_source_scenes({"image_size": 100}, SOURCE, seed=0)


def test_gallery_has_one_panel_per_scene(source) -> None:  # noqa: ANN001
    assert len(plot_world_gallery(source[1], source[2], n=8).axes) == 8


def test_extension_keeps_answers_and_moves_boxes_by_the_offset(source, extended) -> None:  # noqa: ANN001
    scenes, records, images = source
    table, kept, ext_images, report = extended
    assert report["canvas"] == [168, 168]
    assert report["pass_rates"]["passed"] > 0.9 and len(table) == report["n_extended_scenes"]
    assert all(im.size == (168, 168) for im in ext_images.values())
    row = table.iloc[0]
    before = records[records["scene_id"] == row["scene_id"]].set_index("record_id")
    after = kept[kept["scene_id"] == row["scene_id"]].set_index("record_id")
    for rid, rec in after.iterrows():
        moved = [
            [x0 + row["offset_x"], y0 + row["offset_y"], x1 + row["offset_x"], y1 + row["offset_y"]]
            for x0, y0, x1, y1 in before.loc[rid, "target_boxes"]
        ]
        assert [list(b) for b in rec["target_boxes"]] == moved
        assert rec["answer_text"] == before.loc[rid, "answer_text"]
    assert set(table["split"]) <= {"train", "val", "test"}


def test_corpus_covers_the_questions(source) -> None:  # noqa: ANN001
    corpus = " ".join(defender_corpus(WORLD, n_scenes=20))
    for question in source[1]["question"]:
        assert all(word in corpus for word in question.split())
    assert "\\boxed{" in corpus and "Please answer the following" in corpus


def test_initial_defender_checks_its_source(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="defender.source"):
        build_initial_defender({"source": "huge"}, WORLD, seed=0)
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        build_initial_defender({"source": "pretrained", "path": str(tmp_path)}, WORLD, seed=0)


class ScriptedDefender:
    """Right on every clean image; on edited images wrong for `fooled` families only."""

    def __init__(self, records: pd.DataFrame, clean_images: dict, fooled: set[str]) -> None:
        self.truth = {
            r["question"]: (r["answer_text"], r["family"]) for r in records.to_dict("records")
        }
        self.clean = {id(image) for image in clean_images.values()}
        self.fooled = fooled

    def generate(self, images, prompts, *, n, temperature, max_new_tokens, batch_size, seed):  # noqa: ANN001
        out = []
        for image, prompt in zip(images, prompts, strict=True):
            answer, family = next(v for q, v in self.truth.items() if q in prompt)
            wrong = id(image) not in self.clean and family in self.fooled
            out.append([f"\\boxed{{{'nothing' if wrong else answer}}}"] * n)
        return out


def test_stage_two_slice_keeps_exactly_the_pairs_the_defender_fails(extended) -> None:  # noqa: ANN001
    table, kept, ext_images, _ = extended
    kept = kept.assign(
        question=[f"{q} [{r}]" for q, r in zip(kept["question"], kept["record_id"], strict=True)]
    )
    defender = ScriptedDefender(kept, ext_images, fooled={"count", "spatial"})
    catalog = DataCatalog(
        {
            "extended_scenes": MemoryDataset(table),
            "extended_records": MemoryDataset(kept),
            "extended_images": MemoryDataset(ext_images, copy_mode="assign"),
            "base_defender": MemoryDataset(defender, copy_mode="assign"),
            "params:implant": MemoryDataset({"per_record": 1}),
            "params:effectiveness": MemoryDataset({"k": 2, "answer_mode": "word"}),
            "params:world": MemoryDataset(WORLD),
            "params:seed": MemoryDataset(0),
        }
    )
    for name in ("aot_sft_candidates", "aot_sft_pairs", "aot_sft_report"):
        catalog[name] = MemoryDataset(copy_mode="assign")  # keep them past their last consumer
    stage_two = create_pipeline().only_nodes_with_tags("aot_sft").to_nodes("filter_effective")
    SequentialRunner().run(stage_two, catalog)
    scored = catalog.load("aot_sft_candidates")
    pairs = catalog.load("aot_sft_pairs")
    report = catalog.load("aot_sft_report")
    assert len(scored) > 0 and report["n_pairs"] == len(scored)
    assert set(pairs["record_id"]) == set(
        scored.loc[scored["family"].isin(["count", "spatial"]), "record_id"]
    )
    assert report["clean_accuracy"] == 1.0
    assert report["by_family_accuracy"]["attribute"]["implanted"] == 1.0
    assert report["by_family_accuracy"]["count"]["implanted"] == 0.0
    for row in scored.to_dict("records"):  # no distractor touches a target box
        x0, y0, x1, y1 = row["distractor_box"]
        for t in row["target_boxes"]:
            assert x1 <= t[0] or t[2] <= x0 or y1 <= t[1] or t[3] <= y0


def test_distractor_placement_grid_is_its_own_parameter(extended) -> None:  # noqa: ANN001
    from aot.pipelines.bootstrap_dataset.implant_nodes import propose_distractors

    table, kept, _, _ = extended
    world = {**WORLD, "grid": 28}

    def boxes(implant: dict) -> list[list[int]]:
        return list(propose_distractors(table, kept, implant, world, seed=0)["distractor_box"])

    # unset: the world's grid, so every distractor sits inside one 28-px cell
    for x0, y0, x1, y1 in boxes({"per_record": 2}):
        assert x0 // 28 == (x1 - 1) // 28 and y0 // 28 == (y1 - 1) // 28
    # grid 0: anywhere, so a 30-px distractor (wider than a cell) can be placed
    free = boxes({"per_record": 2, "grid": 0, "size_range": [30, 30]})
    assert free and all(x1 - x0 == 30 and y1 - y0 == 30 for x0, y0, x1, y1 in free)
