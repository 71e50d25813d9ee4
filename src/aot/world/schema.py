"""The VQA record schema: THE table format to follow when bringing your own dataset.

One row per question, stored as a pandas table (parquet). Columns:

==============  =================  ==============================================================
column          type               meaning
==============  =================  ==============================================================
record_id       str                unique id, e.g. ``"scene_3-count-0"``
scene_id        str                id of the scene / source image the question is about
image           str                image key: file name relative to the image folder, WITHOUT
                                   extension (world data uses the scene_id)
family          str                one of ``FAMILIES``: spatial, attribute, count, existence
subtype         str                e.g. the POPE negative strategy (random / popular /
                                   adversarial); ``""`` if none
question        str                the question text only (no options, no instructions)
options         list[str]          answer options for multiple choice, in display order;
                                   ``[]`` for yes/no questions
answer          str                the correct option's letter (``"A"``, ``"B"``, ...) for
                                   multiple choice, ``"Yes"`` / ``"No"`` for yes/no
answer_text     str                the correct option's text (``options[letter]``), or Yes / No
target_boxes    list[list[int]]    pixel boxes ``[x0, y0, x1, y1]`` (x1, y1 exclusive) of the
                                   objects the question is about; ``[]`` if none
spec            str                JSON of the structured question spec from which the answer
                                   is re-derived on edited scenes; ``""`` for user data
seed            int                seed of the generator that made the record (0 for user data)
==============  =================  ==============================================================

``validate_records`` checks a table against this schema and raises ``RecordError`` naming the
record and the field, so a broken user dataset fails with an actionable message.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

RECORD_COLUMNS: dict[str, str] = {
    "record_id": "str",
    "scene_id": "str",
    "image": "str",
    "family": "str",
    "subtype": "str",
    "question": "str",
    "options": "list[str]",
    "answer": "str",
    "answer_text": "str",
    "target_boxes": "list[list[int]]",
    "spec": "str",
    "seed": "int",
}
FAMILIES: tuple[str, ...] = ("spatial", "attribute", "count", "existence")
YES, NO = "Yes", "No"
LETTERS = string.ascii_uppercase


class RecordError(ValueError):
    """A record violates the schema; the message names the record and the field."""


def records_to_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Records as a DataFrame with exactly the schema's columns, in schema order."""
    return pd.DataFrame([{c: r[c] for c in RECORD_COLUMNS} for r in records])


def answer_letter(options: Sequence[str], answer_text: str) -> str:
    """Letter of ``answer_text`` among ``options`` (the MCQ answer column)."""
    return LETTERS[list(options).index(answer_text)]


def _is_seq(value: Any) -> bool:
    """Lists survive parquet as numpy arrays, so accept any non-string sequence."""
    return isinstance(value, list | tuple | np.ndarray)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _fail(rid: str, name: str, problem: str) -> RecordError:
    return RecordError(f"{rid}: field {name!r} {problem}")


def _check_types(rid: str, row: dict[str, Any]) -> None:
    for name, kind in RECORD_COLUMNS.items():
        value = row[name]
        if kind == "str" and not isinstance(value, str):
            raise _fail(rid, name, f"must be a str, got {type(value).__name__} {value!r}")
        if kind == "int" and not _is_int(value):
            raise _fail(rid, name, f"must be an int, got {type(value).__name__} {value!r}")
    if not _is_seq(row["options"]) or not all(isinstance(o, str) for o in row["options"]):
        raise _fail(rid, "options", f"must be a list of str, got {row['options']!r}")
    if not _is_seq(row["target_boxes"]):
        raise _fail(rid, "target_boxes", f"must be a list of boxes, got {row['target_boxes']!r}")


def _check_answer(rid: str, row: dict[str, Any]) -> None:
    options, answer, text = list(row["options"]), row["answer"], row["answer_text"]
    if not options:
        if answer not in (YES, NO):
            raise _fail(rid, "answer", f"is {answer!r} but a question without options needs Yes/No")
        if text != answer:
            raise _fail(rid, "answer_text", f"is {text!r} but answer is {answer!r}")
        return
    if len(options) < 2:
        raise _fail(rid, "options", f"has {len(options)} option; multiple choice needs >= 2")
    if len(set(options)) != len(options):
        raise _fail(rid, "options", f"has duplicate options {options!r}")
    if len(answer) != 1 or answer not in LETTERS:
        raise _fail(rid, "answer", f"is {answer!r} but must be a capital letter")
    index = LETTERS.index(answer)
    if index >= len(options):
        raise _fail(rid, "answer", f"is {answer!r} but there are only {len(options)} options")
    if options[index] != text:
        raise _fail(rid, "answer_text", f"is {text!r} but option {answer} is {options[index]!r}")


def _check_boxes(rid: str, row: dict[str, Any], size: tuple[int, int] | None) -> None:
    for box in row["target_boxes"]:
        if not _is_seq(box) or len(box) != 4 or not all(_is_int(v) for v in box):
            raise _fail(rid, "target_boxes", f"has {box!r}; a box is 4 ints [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (x0 < x1 and y0 < y1):
            raise _fail(
                rid, "target_boxes", f"has empty box {[x0, y0, x1, y1]} (need x0<x1, y0<y1)"
            )
        if size is not None and not (0 <= x0 and 0 <= y0 and x1 <= size[0] and y1 <= size[1]):
            raise _fail(
                rid,
                "target_boxes",
                f"has box {[x0, y0, x1, y1]} outside the {size[0]}x{size[1]} image",
            )


def _check_row(
    rid: str, row: dict[str, Any], image_sizes: dict[str, tuple[int, int]] | None
) -> None:
    """All per-row checks, in the order a user would want to fix them."""
    _check_types(rid, row)
    if row["family"] not in FAMILIES:
        raise _fail(rid, "family", f"is {row['family']!r}; known families: {list(FAMILIES)}")
    _check_answer(rid, row)
    size = None
    if image_sizes is not None:
        if row["image"] not in image_sizes:
            raise _fail(rid, "image", f"is {row['image']!r} which is not among the images")
        size = image_sizes[row["image"]]
    _check_boxes(rid, row, size)
    if row["spec"]:
        try:
            json.loads(row["spec"])
        except json.JSONDecodeError as err:
            raise _fail(rid, "spec", f"is not valid JSON ({err})") from err


def validate_records(
    df: pd.DataFrame, image_sizes: dict[str, tuple[int, int]] | None = None
) -> None:
    """Raise ``RecordError`` on the first schema violation; ``image_sizes`` maps image -> (w, h)."""
    if df is None or len(df) == 0:
        raise RecordError("records table is empty: expected at least one record")
    missing = [c for c in RECORD_COLUMNS if c not in df.columns]
    if missing:
        raise RecordError(
            f"records table: field(s) {missing} missing; required columns: {list(RECORD_COLUMNS)}"
        )
    seen: dict[str, int] = {}
    for i, row in enumerate(df[list(RECORD_COLUMNS)].to_dict("records")):
        rid_value = row["record_id"]
        rid = f"record {rid_value!r}" if isinstance(rid_value, str) else f"row {i}"
        _check_row(rid, row, image_sizes)
        if rid_value in seen:
            raise _fail(rid, "record_id", f"is duplicated (rows {seen[rid_value]} and {i})")
        seen[rid_value] = i
