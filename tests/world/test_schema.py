"""Record schema validation: generated records pass, broken ones name record and field."""

import numpy as np
import pandas as pd
import pytest

from aot.world import (
    RECORD_COLUMNS,
    QuestionConfig,
    RecordError,
    WorldConfig,
    make_questions,
    records_to_frame,
    sample_scene,
    validate_records,
)


@pytest.fixture
def frame() -> tuple[pd.DataFrame, dict[str, tuple[int, int]]]:
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, WorldConfig(), f"scene_{i}") for i in range(10)]
    records = [r for s in scenes for r in make_questions(s, rng, QuestionConfig(), seed=11)]
    return records_to_frame(records), {s.scene_id: (s.width, s.height) for s in scenes}


def _first(df: pd.DataFrame, family: str) -> int:
    return int(np.flatnonzero(df["family"] == family)[0])


def test_generated_records_pass(frame):
    df, sizes = frame
    assert list(df.columns) == list(RECORD_COLUMNS)
    assert (df["seed"] == 11).all()
    validate_records(df, sizes)
    validate_records(df)


def test_records_pass_after_parquet_round_trip(frame, tmp_path):
    df, sizes = frame
    df.to_parquet(tmp_path / "records.parquet")
    back = pd.read_parquet(tmp_path / "records.parquet")
    validate_records(back, sizes)
    bad = back.copy()
    bad.at[0, "target_boxes"] = [[0, 0, 500, 10]]
    with pytest.raises(RecordError, match="target_boxes"):
        validate_records(bad, sizes)


def test_empty_table(frame):
    df, _ = frame
    with pytest.raises(RecordError, match="empty"):
        validate_records(df.iloc[:0])


def test_missing_column(frame):
    df, _ = frame
    with pytest.raises(RecordError, match="answer_text"):
        validate_records(df.drop(columns=["answer_text"]))


def test_bad_letter_names_record_and_field(frame):
    df, _ = frame
    i = _first(df, "count")
    df.at[i, "answer"] = "E"
    rid = df.at[i, "record_id"]
    with pytest.raises(RecordError) as err:
        validate_records(df)
    assert str(err.value) == f"record '{rid}': field 'answer' is 'E' but there are only 4 options"


def test_answer_text_must_match_option(frame):
    df, _ = frame
    i = _first(df, "spatial")
    letter = df.at[i, "answer"]
    df.at[i, "answer"] = "A" if letter != "A" else "B"
    with pytest.raises(RecordError, match=f"'{df.at[i, 'record_id']}': field 'answer_text'"):
        validate_records(df)


def test_yes_no_answer_rules(frame):
    df, _ = frame
    i = _first(df, "existence")
    df.at[i, "answer"] = "Maybe"
    with pytest.raises(RecordError, match=f"'{df.at[i, 'record_id']}': field 'answer'"):
        validate_records(df)


def test_box_outside_image(frame):
    df, sizes = frame
    i = _first(df, "attribute")
    df.at[i, "target_boxes"] = [[100, 100, 120, 113]]
    rid = df.at[i, "record_id"]
    validate_records(df)  # without image sizes only the box shape is checked
    with pytest.raises(RecordError, match=f"record '{rid}': field 'target_boxes'.*outside"):
        validate_records(df, sizes)


@pytest.mark.parametrize("box", [[5, 5, 5, 10], [1, 2, 3], [0.5, 0, 4, 4]])
def test_malformed_box(frame, box):
    df, _ = frame
    df.at[0, "target_boxes"] = [box]
    with pytest.raises(RecordError, match="field 'target_boxes'"):
        validate_records(df)


def test_duplicate_record_id(frame):
    df, _ = frame
    rid = df.at[0, "record_id"]
    df.at[3, "record_id"] = rid
    with pytest.raises(RecordError, match=f"record '{rid}': field 'record_id' is duplicated"):
        validate_records(df)


def test_wrong_types_and_unknown_family(frame):
    df, sizes = frame
    bad = df.copy()
    bad.at[1, "options"] = "A,B"
    with pytest.raises(RecordError, match="field 'options'"):
        validate_records(bad)
    bad = df.copy()
    bad.at[2, "family"] = "ocr"
    with pytest.raises(RecordError, match="field 'family' is 'ocr'"):
        validate_records(bad)
    bad = df.copy()
    bad.at[2, "image"] = "missing"
    with pytest.raises(RecordError, match="field 'image'"):
        validate_records(bad, sizes)
    bad = df.copy()
    bad.at[2, "spec"] = "{not json"
    with pytest.raises(RecordError, match="field 'spec'"):
        validate_records(bad)
