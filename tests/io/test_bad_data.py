"""Bad input data stops a run before any work, naming the record or the file; a failing save
never damages what was written before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, DatasetError
from PIL import Image

from aot.datasets import ImageFolderDataset, TableDataset
from aot.hooks import RecordValidationHook
from aot.validation import DataError, check_record_table
from aot.world import QuestionConfig, WorldConfig, make_questions, records_to_frame, sample_scene


def _noise(side: int, seed: int = 0) -> Image.Image:
    """An image that compresses badly, so half of its PNG bytes cut into the pixel data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def world() -> tuple[pd.DataFrame, dict[str, Image.Image]]:
    """Valid records about two small scenes, and their images in memory."""
    cfg = WorldConfig(image_size=56, max_objects=3)
    rng = np.random.default_rng(0)
    records, images = [], {}
    for i in range(2):
        scene = sample_scene(rng, cfg, f"scene_{i}")
        records += make_questions(scene, rng, QuestionConfig.for_world(cfg))
        images[scene.scene_id] = scene.render()
    table = records_to_frame(records)
    check_record_table(table, "world", images)  # the fixture itself is valid
    return table, images


# ------------------------------------------------------------------------------- images


def test_a_truncated_png_in_an_image_folder_is_named_on_load(tmp_path: Path) -> None:
    dataset = ImageFolderDataset(path=str(tmp_path / "images"))
    dataset.save({"fine": _noise(28, 1), "cut": _noise(56, 2)})
    _truncate(tmp_path / "images" / "cut.png")
    with pytest.raises(DatasetError, match=r"cut\.png: \w+: .*"):
        dataset.load()
    (tmp_path / "images" / "cut.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"(?s)1 image file\(s\) are corrupt.*cut\.png"):
        dataset.load()
    (tmp_path / "images" / "cut.png").unlink()
    assert list(dataset.load()) == ["fine"]


def test_a_failing_image_folder_save_keeps_the_previous_images(tmp_path: Path) -> None:
    dataset = ImageFolderDataset(path=str(tmp_path / "images"))
    dataset.save({"a": _noise(28, 1), "b": _noise(28, 2)})

    def disk_full() -> Image.Image:
        raise OSError("disk full")

    with pytest.raises(DatasetError, match="disk full"):
        dataset.save({"a": _noise(28, 3), "c": disk_full})
    loaded = dataset.load()
    assert sorted(loaded) == ["a", "b"]
    assert np.array_equal(np.asarray(loaded["a"]()), np.asarray(_noise(28, 1)))
    assert [p.name for p in tmp_path.iterdir()] == ["images"]  # no temporary folder left
    # A lazy value may read the folder it replaces.
    dataset.save({"a": loaded["a"], "d": _noise(28, 4)})
    assert sorted(dataset.load()) == ["a", "d"]


def test_a_failing_table_save_keeps_the_previous_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = TableDataset(filepath=str(tmp_path / "t.parquet"))
    before = pd.DataFrame({"record_id": ["a", "b"], "n": [1, 2]})
    dataset.save(before)

    def half_written(self: pd.DataFrame, path: Any, **kwargs: Any) -> None:
        target = open(path, "wb") if isinstance(path, str | Path) else path  # noqa: SIM115
        target.write(b"PAR1 half a table")
        target.flush()
        raise OSError("killed while writing")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_written)
    with pytest.raises(DatasetError, match="killed while writing"):
        dataset.save(pd.DataFrame({"record_id": ["c"], "n": [3]}))
    monkeypatch.undo()
    pd.testing.assert_frame_equal(dataset.load(), before)
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temporary file left
    after = pd.DataFrame({"record_id": ["c"], "n": [3]})
    dataset.save(after)
    pd.testing.assert_frame_equal(dataset.load(), after)


# ------------------------------------------------------------------------------ records


def test_an_empty_record_table_is_refused(world: Any) -> None:
    table, images = world
    with pytest.raises(DataError, match=r"extended_records \(x\.parquet\): records table is empty"):
        check_record_table(table.iloc[0:0], "extended_records (x.parquet)", images)


def test_a_record_missing_a_field_is_named(world: Any) -> None:
    table, images = world
    with pytest.raises(DataError, match=r"field\(s\) \['question'\] missing"):
        check_record_table(table.drop(columns=["question"]), "records", images)
    broken = table.copy()
    rid = broken.loc[1, "record_id"]
    broken.loc[1, "question"] = None
    with pytest.raises(DataError, match=rf"record '{rid}': field 'question' must be a str"):
        check_record_table(broken, "records", images)


def test_a_box_outside_its_image_is_named(world: Any) -> None:
    table, images = world
    broken = table.copy()
    row = next(i for i, boxes in enumerate(broken["target_boxes"]) if len(boxes))
    rid = broken.loc[row, "record_id"]
    broken.at[row, "target_boxes"] = [[40, 40, 70, 70]]
    with pytest.raises(DataError, match=rf"record '{rid}'.*outside the 56x56 image"):
        check_record_table(broken, "records", images)


def test_a_record_whose_image_is_missing_is_named(world: Any) -> None:
    table, images = world
    rid = table.loc[0, "record_id"]
    with pytest.raises(DataError, match=rf"record '{rid}': field 'image' is 'scene_0'"):
        check_record_table(table, "records", {"scene_1": images["scene_1"]})


def test_a_truncated_image_behind_a_record_is_named_before_it_is_used(
    world: Any, tmp_path: Path
) -> None:
    """Images from a Kedro image folder arrive as lazy loaders; the check reads each file to the
    end without keeping its pixels, and names the record and the file."""
    table, images = world
    ImageFolderDataset(path=str(tmp_path / "imgs")).save(images)
    _truncate(tmp_path / "imgs" / "scene_1.png")
    lazy = ImageFolderDataset(path=str(tmp_path / "imgs"), verify=False).load()
    rid = table.loc[table["image"] == "scene_1", "record_id"].iloc[0]
    with pytest.raises(
        DataError, match=rf"record '{rid}': image 'scene_1' \(.*scene_1\.png\) is corrupt"
    ):
        check_record_table(table, "extended_records", lazy)


def test_the_record_hook_stops_a_node_before_it_runs(world: Any) -> None:
    table, images = world
    hook = RecordValidationHook()
    broken = table.copy()
    broken.at[0, "target_boxes"] = [[-5, 0, 10, 10]]
    with pytest.raises(DataError, match=rf"source_records: record '{table.loc[0, 'record_id']}'"):
        hook.before_node_run(
            node=None,
            catalog=DataCatalog(),
            inputs={"source_records": broken, "source_images": images},
            run_id="run-1",
        )
    # A valid table is checked once per run, then trusted.
    inputs = {"extended_records": table, "extended_images": images}
    hook.before_node_run(node=None, catalog=DataCatalog(), inputs=inputs, run_id="run-2")
    assert ("run-2", "extended_records") in hook._checked
    hook.before_node_run(
        node=None,
        catalog=DataCatalog(),
        inputs={"extended_records": table.iloc[0:0], "extended_images": images},
        run_id="run-2",
    )
    with pytest.raises(DataError, match="records table is empty"):
        hook.before_node_run(
            node=None,
            catalog=DataCatalog(),
            inputs={"extended_records": table.iloc[0:0]},
            run_id="run-3",
        )
