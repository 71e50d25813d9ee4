"""Node functions of the existing pipelines, on small in-memory inputs."""

from __future__ import annotations

import pandas as pd
import pytest

from aot.pipelines.bootstrap_dataset.nodes import generate_source_scenes, plot_world_gallery
from aot.pipelines.evaluation.nodes import answer_records, summarize_clean
from aot.pipelines.sft.nodes import build_base_defender, defender_corpus
from aot.world import Scene, validate_records

WORLD = {"image_size": 112, "min_objects": 2, "max_objects": 4}
SOURCE = {"n_scenes": 20, "splits": {"train": 0.6, "val": 0.2, "test": 0.2}}
TINY = {"hidden_size": 64, "intermediate_size": 128, "vision_hidden_size": 32, "vocab_size": 400}


@pytest.fixture(scope="module")
def source() -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    return generate_source_scenes(WORLD, SOURCE, seed=3)


def test_source_scenes_split_by_scene_and_match_the_graph(source) -> None:  # noqa: ANN001
    scenes, records, images = source
    assert len(scenes) == 20 and set(images) == set(scenes["scene_id"])
    assert scenes["split"].value_counts().to_dict() == {"train": 12, "val": 4, "test": 4}
    # every record of a scene carries that scene's split: no leakage across splits
    merged = records.merge(scenes[["scene_id", "split"]], on="scene_id", suffixes=("", "_scene"))
    assert (merged["split"] == merged["split_scene"]).all()
    assert set(records["family"]) == {"spatial", "attribute", "count", "existence"}
    validate_records(records, {k: v.size for k, v in images.items()})
    first = Scene.from_dict(__import__("json").loads(scenes["graph"].iloc[0]))
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
    figure = plot_world_gallery(source[1], source[2], n=8)
    assert len(figure.axes) == 8


def test_corpus_covers_the_questions(source) -> None:  # noqa: ANN001
    corpus = " ".join(defender_corpus(WORLD))
    for question in source[1]["question"]:
        assert all(word in corpus for word in question.split())
    assert "\\boxed{" in corpus


def test_base_defender_answers_and_is_scored(source) -> None:  # noqa: ANN001
    defender = build_base_defender({"source": "tiny", "tiny": TINY}, WORLD, seed=0)
    predictions = answer_records(
        defender, source[1], source[2], {"split": "test", "max_new_tokens": 6}
    )
    assert len(predictions) == (source[1]["split"] == "test").sum()
    assert predictions["reward"].isin([0.0, 0.8, 1.0]).all()
    metrics = summarize_clean(predictions)
    assert metrics["n"]["overall"] == len(predictions)
    assert set(metrics["accuracy"]) == {"spatial", "attribute", "count", "existence", "overall"}
    assert 0.0 <= metrics["accuracy"]["overall"] <= 1.0


def test_base_defender_checks_its_source(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="defender.source"):
        build_base_defender({"source": "huge"}, WORLD, seed=0)
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        build_base_defender({"source": "pretrained", "path": str(tmp_path)}, WORLD, seed=0)


def test_summaries_refuse_empty_tables() -> None:
    with pytest.raises(ValueError, match="empty"):
        summarize_clean(pd.DataFrame(columns=["family", "correct", "extracted"]))
