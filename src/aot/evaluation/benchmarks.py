"""Loaders for local copies of public benchmarks, into the project's record schema (§6.2).

Every loader returns ``(table, images)``: one row per question with the columns
``record_id, image, question, options, answer, answer_text, family, subtype, prompt,
benchmark`` (plus benchmark-specific extras), and ``images`` mapping each image key to a
zero-argument callable that decodes the image lazily (``aot.evaluation.protocols`` calls it).
A missing image file is reported at load time, a corrupt one when it is decoded; both raise
``BenchmarkError`` (a ValueError) naming the file, and for TSVs the row (1-based, header
excluded, with its ``index``) and the column. A missing column or an empty / invalid cell
likewise raises ``BenchmarkError`` naming file, row and column.

``prompt`` holds the benchmark's own letter-mode prompt (the paper's templates of §6.1), which
``answer_table`` uses verbatim; score with ``answer_table(..., extractor=<benchmark name>)`` to
get the paper's lenient extraction, then ``score_benchmark``.

Formats:

* **POPE** (VLMEvalKit ``POPE.tsv``): ``index, question, answer, category`` and ``image``
  (base64). ``answer`` is yes/no in any case. ``category`` (random / popular / adversarial,
  possibly comma-joined) becomes ``subtype``; ``family`` is ``existence``. Scored by
  ``pope_metrics``.
* **HallusionBench** (TSV): ``index, question, answer, category, l2-category`` and ``image``
  (base64) or ``image_path``. ``answer`` is yes/no (or 1/0). ``set_id``, ``figure_id`` and
  ``question_id`` come from columns of those names when all three exist, else from the 4th,
  5th and 6th ``_``-separated fields of ``index``. ``family`` = category, ``subtype`` =
  l2-category. Scored by ``hallusion_metrics``: aAcc (per question), fAcc (share of
  (l2-category, set, figure) groups all correct) and qAcc (share of (l2-category, set,
  question_id) groups all correct), overall and per category / l2-category. The paper's table
  most plausibly reports aAcc.
* **V\\*Bench** (folder): ``<root>/<category>/<id>.json`` with ``question``, ``options`` (the
  correct one **first**) and optional ``bbox`` (``[x, y, w, h]`` or a list of them; set
  ``bbox_format="xyxy"`` otherwise), and the image ``<id>.jpg`` (or .jpeg/.png/.webp, or the
  file named by an ``image`` key). **The ground truth is always "A"**, since V\\* lists the
  correct option first and the paper does not shuffle; ``shuffle_options`` gives the
  shuffled variant the method notes recommend reporting as well. The prompt lists options as
  ``(A) ...`` lines after the question. ``family`` = category; boxes go to ``target_boxes``
  (x0, y0, x1, y1). Scored per category and micro-averaged overall.
* **HR-Bench 4K/8K** (TSV): ``index, question, A, B, C, D, answer, category`` and ``image``
  (base64) or ``image_path``. The prompt is the question, ``Options:``, then ``A. ...`` lines.
  ``family`` = category (FSP = single-instance, FCP = cross-instance), ``subtype`` =
  ``cycle_category`` when present. Overall is the micro-average over all rows.

VLMEvalKit TSVs store a repeated image once: a short ``image`` value (at most 64 characters)
is the ``index`` of the row holding the data, and both rows share one image key.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from aot.evaluation.pope import pope_metrics
from aot.metrics import accuracy_by_family
from aot.rewards import build_prompt
from aot.rewards.answer import MCQ_HEADER, MCQ_LETTER_FOOTER, OPTION_LETTERS

ImageLoader = Callable[[], Image.Image]
Loaded = tuple[pd.DataFrame, dict[str, ImageLoader]]

BENCHMARK_COLUMNS: tuple[str, ...] = (
    "record_id",
    "image",
    "question",
    "options",
    "answer",
    "answer_text",
    "family",
    "subtype",
    "prompt",
    "benchmark",
)
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")
REFERENCE_MAX_CHARS = 64
YES_NO_VALUES: dict[str, str] = {"yes": "Yes", "no": "No", "1": "Yes", "0": "No"}


class BenchmarkError(ValueError):
    """A benchmark file is malformed; the message names the file, the row and the column."""


@dataclass(frozen=True)
class Where:
    """A position in a benchmark file, for error messages."""

    file: Path
    row: int | None = None
    index: str | None = None

    def error(self, column: str, problem: str) -> BenchmarkError:
        """A BenchmarkError naming this file, row and ``column``."""
        row = "" if self.row is None else f" row {self.row} (index {self.index!r}):"
        return BenchmarkError(f"{self.file}:{row} column {column!r} {problem}")


# ------------------------------------------------------------------------------ images


def decode_image(open_bytes: Callable[[], Any], source: str) -> Image.Image:
    """Open, fully decode and convert to RGB; BenchmarkError naming ``source`` on failure."""
    try:
        image = Image.open(open_bytes())
        image.load()
    except (OSError, ValueError, binascii.Error) as err:
        raise BenchmarkError(f"{source}: the image cannot be decoded ({err})") from err
    return image.convert("RGB")


def base64_loader(data: str, source: str) -> ImageLoader:
    """A lazy loader of a base64-encoded image."""

    def load() -> Image.Image:
        return decode_image(lambda: io.BytesIO(base64.b64decode(data)), source)

    return load


def file_loader(file: Path) -> ImageLoader:
    """A lazy loader of an image file."""

    def load() -> Image.Image:
        if not file.is_file():
            raise BenchmarkError(f"{file}: image file is missing")
        return decode_image(lambda: file, str(file))

    return load


# --------------------------------------------------------------------------------- TSVs


def read_tsv(path: str | Path, required: Sequence[str]) -> tuple[Path, pd.DataFrame]:
    """The TSV as strings, checked for ``required`` columns, an image column and rows."""
    file = Path(path)
    if not file.is_file():
        raise BenchmarkError(f"{file}: benchmark file not found")
    frame = pd.read_csv(file, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise BenchmarkError(
            f"{file}: missing column(s) {missing}; found columns {list(frame.columns)}"
        )
    if "image" not in frame.columns and "image_path" not in frame.columns:
        raise BenchmarkError(f"{file}: missing column 'image' (base64) or 'image_path'")
    if frame.empty:
        raise BenchmarkError(f"{file}: no rows")
    return file, frame


def cell(row: Mapping[str, Any], column: str, where: Where) -> str:
    """The stripped, non-empty text of ``row[column]``."""
    value = str(row.get(column, "")).strip()
    if not value:
        raise where.error(column, "is empty")
    return value


def yes_no(row: Mapping[str, Any], column: str, where: Where) -> str:
    """``"Yes"``/``"No"`` from yes/no (any case) or 1/0."""
    value = cell(row, column, where)
    if value.lower() not in YES_NO_VALUES:
        raise where.error(column, f"is {value!r}; expected yes/no")
    return YES_NO_VALUES[value.lower()]


def row_places(file: Path, frame: pd.DataFrame) -> list[Where]:
    """One ``Where`` per row; BenchmarkError on an empty or duplicated ``index``."""
    places: list[Where] = []
    seen: dict[str, int] = {}
    for i, index in enumerate(frame["index"], start=1):
        where = Where(file, i, str(index))
        if not str(index).strip():
            raise where.error("index", "is empty")
        if str(index) in seen:
            raise where.error("index", f"duplicates row {seen[str(index)]}")
        seen[str(index)] = i
        places.append(where)
    return places


def row_image(
    row: Mapping[str, Any], where: Where, prefix: str, data_rows: Mapping[str, str]
) -> tuple[str, ImageLoader | None]:
    """(image key, loader or None when the key's loader comes from another row)."""
    data = str(row.get("image", "")).strip()
    if data and len(data) <= REFERENCE_MAX_CHARS:
        if data not in data_rows:
            raise where.error("image", f"refers to index {data!r}, which holds no image data")
        return f"{prefix}-{data}", None
    if data:
        return f"{prefix}-{where.index}", base64_loader(data, f"{where.file} row {where.row}")
    relative = cell(row, "image_path", where)
    file = Path(relative) if Path(relative).is_absolute() else where.file.parent / relative
    if not file.is_file():
        raise where.error("image_path", f"names {str(file)!r}, which does not exist")
    return f"{prefix}-{relative.replace('/', '_')}", file_loader(file)


def tsv_images(
    frame: pd.DataFrame, places: Sequence[Where], prefix: str
) -> tuple[list[str], dict[str, ImageLoader]]:
    """The image key of every row and the loaders of all distinct images."""
    column = frame["image"] if "image" in frame.columns else pd.Series([""] * len(frame))
    data_rows = {
        str(i): str(d)
        for i, d in zip(frame["index"], column, strict=True)
        if len(str(d)) > REFERENCE_MAX_CHARS
    }
    keys: list[str] = []
    loaders: dict[str, ImageLoader] = {}
    for row, where in zip(frame.to_dict("records"), places, strict=True):
        key, loader = row_image(row, where, prefix, data_rows)
        keys.append(key)
        if loader is not None:
            loaders.setdefault(key, loader)
    return keys, loaders


def make_record(**fields: Any) -> dict[str, Any]:
    """A benchmark record with every ``BENCHMARK_COLUMNS`` entry (extras kept after them)."""
    missing = [c for c in BENCHMARK_COLUMNS if c not in fields]
    if missing:
        raise KeyError(f"make_record: missing {missing}")
    return {c: fields[c] for c in BENCHMARK_COLUMNS} | {
        k: v for k, v in fields.items() if k not in BENCHMARK_COLUMNS
    }


# ------------------------------------------------------------------------------ prompts


def vstar_prompt(question: str, options: Sequence[str]) -> str:
    """The MCQ template around the question and ``(A) ...`` option lines (V* layout)."""
    lines = "\n".join(f"({OPTION_LETTERS[i]}) {o}" for i, o in enumerate(options))
    return MCQ_HEADER + question + "\n" + lines + MCQ_LETTER_FOOTER


def letter_prompt(question: str, options: Sequence[str]) -> str:
    """The protocol prompt in letter mode (``Options:`` then ``A. ...``; yes/no if none)."""
    return build_prompt(question, options, mode="letter")


BENCHMARK_PROMPTS: dict[str, Callable[[str, Sequence[str]], str]] = {
    "pope": letter_prompt,
    "hallusionbench": letter_prompt,
    "vstar": vstar_prompt,
    "hrbench": letter_prompt,
}

# ------------------------------------------------------------------------------ loaders


def load_pope(path: str | Path) -> Loaded:
    """POPE TSV -> (records, lazy images). See the module docstring for the format."""
    file, frame = read_tsv(path, ("index", "question", "answer", "category"))
    places = row_places(file, frame)
    keys, loaders = tsv_images(frame, places, "pope")
    records = []
    for row, where, key in zip(frame.to_dict("records"), places, keys, strict=True):
        question, answer = cell(row, "question", where), yes_no(row, "answer", where)
        records.append(
            make_record(
                record_id=f"pope-{where.index}",
                image=key,
                question=question,
                options=[],
                answer=answer,
                answer_text=answer,
                family="existence",
                subtype=cell(row, "category", where),
                prompt=letter_prompt(question, []),
                benchmark="pope",
                index=where.index,
            )
        )
    return pd.DataFrame(records), loaders


def hallusion_ids(row: Mapping[str, Any], where: Where, from_columns: bool) -> dict[str, str]:
    """``set_id``, ``figure_id``, ``question_id`` from their columns or from ``index``."""
    names = ("set_id", "figure_id", "question_id")
    if from_columns:
        return {n: cell(row, n, where) for n in names}
    fields = str(where.index).split("_")
    if len(fields) < 6:
        raise where.error(
            "index", "needs >= 6 '_'-separated fields (set, figure, question ids are 4th-6th)"
        )
    return dict(zip(names, fields[3:6], strict=True))


def load_hallusionbench(path: str | Path) -> Loaded:
    """HallusionBench TSV -> (records, lazy images). See the module docstring."""
    file, frame = read_tsv(path, ("index", "question", "answer", "category", "l2-category"))
    places = row_places(file, frame)
    keys, loaders = tsv_images(frame, places, "hallusionbench")
    from_columns = all(c in frame.columns for c in ("set_id", "figure_id", "question_id"))
    records = []
    for row, where, key in zip(frame.to_dict("records"), places, keys, strict=True):
        question, answer = cell(row, "question", where), yes_no(row, "answer", where)
        records.append(
            make_record(
                record_id=f"hallusionbench-{where.index}",
                image=key,
                question=question,
                options=[],
                answer=answer,
                answer_text=answer,
                family=cell(row, "category", where),
                subtype=cell(row, "l2-category", where),
                prompt=letter_prompt(question, []),
                benchmark="hallusionbench",
                index=where.index,
                **hallusion_ids(row, where, from_columns),
            )
        )
    return pd.DataFrame(records), loaders


def hrbench_options(row: Mapping[str, Any], where: Where) -> list[str]:
    """The non-empty options among columns A-D, with no gaps and at least two."""
    values = [str(row.get(letter, "")).strip() for letter in "ABCD"]
    while values and not values[-1]:
        values.pop()
    for letter, value in zip("ABCD", values, strict=False):
        if not value:
            raise where.error(letter, "is empty but a later option is not")
    if len(values) < 2:
        raise where.error("B", "is empty; a question needs at least options A and B")
    return values


def load_hrbench(path: str | Path) -> Loaded:
    """HR-Bench 4K/8K TSV -> (records, lazy images). See the module docstring."""
    columns = ("index", "question", "A", "B", "C", "D", "answer", "category")
    file, frame = read_tsv(path, columns)
    places = row_places(file, frame)
    keys, loaders = tsv_images(frame, places, "hrbench")
    records = []
    for row, where, key in zip(frame.to_dict("records"), places, keys, strict=True):
        question, options = cell(row, "question", where), hrbench_options(row, where)
        answer = cell(row, "answer", where).upper()
        if answer not in OPTION_LETTERS[: len(options)]:
            expected = list(OPTION_LETTERS[: len(options)])
            raise where.error("answer", f"is {answer!r}; expected one of {expected}")
        records.append(
            make_record(
                record_id=f"hrbench-{where.index}",
                image=key,
                question=question,
                options=options,
                answer=answer,
                answer_text=options[OPTION_LETTERS.index(answer)],
                family=cell(row, "category", where),
                subtype=str(row.get("cycle_category", "")).strip(),
                prompt=letter_prompt(question, options),
                benchmark="hrbench",
                index=where.index,
            )
        )
    return pd.DataFrame(records), loaders


def vstar_boxes(value: Any, where: Where, bbox_format: str) -> list[list[int]]:
    """``bbox`` (one box or a list of boxes) as integer ``[x0, y0, x1, y1]`` boxes."""
    if value is None:
        return []
    boxes = value if value and isinstance(value[0], list | tuple) else [value]
    out = []
    for box in boxes:
        if len(box) != 4 or not all(isinstance(v, int | float) for v in box):
            raise where.error("bbox", f"has {box!r}; a box is 4 numbers")
        x, y, a, b = (float(v) for v in box)
        x1, y1 = (x + a, y + b) if bbox_format == "xywh" else (a, b)
        out.append([math.floor(x), math.floor(y), math.ceil(x1), math.ceil(y1)])
    return out


def vstar_image(data: Mapping[str, Any], file: Path) -> Path:
    """The image next to a V* json: its ``image`` key, else the same stem with an image suffix."""
    if isinstance(data.get("image"), str) and data["image"].strip():
        candidates = [file.parent / data["image"].strip()]
    else:
        candidates = [file.with_suffix(s) for s in IMAGE_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = ", ".join(c.name for c in candidates)
    raise Where(file).error("image", f"names no existing image file (looked for {names})")


def vstar_record(file: Path, category: str, bbox_format: str) -> dict[str, Any]:
    """One V* question from its json file (ground truth: the first option)."""
    where = Where(file)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise where.error("(json)", f"is not valid JSON ({err})") from err
    question = data.get("question")
    if not isinstance(question, str) or not question.strip():
        raise where.error("question", "is missing or empty")
    options = data.get("options")
    if (
        not isinstance(options, list)
        or len(options) < 2
        or not all(isinstance(o, str) and o.strip() for o in options)
    ):
        raise where.error("options", f"is {options!r}; expected >= 2 non-empty strings")
    image = vstar_image(data, file)
    return make_record(
        record_id=f"vstar-{category}-{file.stem}",
        image=f"vstar-{category}-{file.stem}",
        question=question.strip(),
        options=list(options),
        answer="A",
        answer_text=options[0],
        family=category,
        subtype="",
        prompt=vstar_prompt(question.strip(), options),
        benchmark="vstar",
        target_boxes=vstar_boxes(data.get("bbox"), where, bbox_format),
        image_file=str(image),
    )


def load_vstar(root: str | Path, *, bbox_format: str = "xywh") -> Loaded:
    """V* folder (``<root>/<category>/<id>.json`` + image) -> (records, lazy images)."""
    if bbox_format not in ("xywh", "xyxy"):
        raise ValueError(f"load_vstar: bbox_format must be 'xywh' or 'xyxy', got {bbox_format!r}")
    folder = Path(root)
    if not folder.is_dir():
        raise BenchmarkError(f"{folder}: V* folder not found")
    records = [
        vstar_record(file, category.name, bbox_format)
        for category in sorted(p for p in folder.iterdir() if p.is_dir())
        for file in sorted(category.glob("*.json"))
    ]
    if not records:
        raise BenchmarkError(f"{folder}: no <category>/<id>.json question files")
    loaders = {r["image"]: file_loader(Path(r["image_file"])) for r in records}
    return pd.DataFrame(records), loaders


BENCHMARK_LOADERS: dict[str, Callable[..., Loaded]] = {
    "pope": load_pope,
    "hallusionbench": load_hallusionbench,
    "vstar": load_vstar,
    "hrbench": load_hrbench,
}

# ------------------------------------------------------------------------------ scoring


def all_correct_share(table: pd.DataFrame, keys: list[str]) -> float:
    """Share of ``keys`` groups whose rows are all correct."""
    return float(table.groupby(keys, sort=True)["correct"].all().mean())


def hallusion_scores(table: pd.DataFrame) -> dict[str, Any]:
    """aAcc, fAcc, qAcc and n of one HallusionBench subset."""
    return {
        "aAcc": float(table["correct"].astype(bool).mean()),
        "fAcc": all_correct_share(table, ["subtype", "set_id", "figure_id"]),
        "qAcc": all_correct_share(table, ["subtype", "set_id", "question_id"]),
        "n": len(table),
    }


def hallusion_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """``{"overall", "category": {...}, "l2_category": {...}}`` of aAcc / fAcc / qAcc / n.

    Needs ``correct``, ``family`` (category), ``subtype`` (l2-category), ``set_id``,
    ``figure_id`` and ``question_id`` (as written by ``load_hallusionbench``).
    """
    needed = ["correct", "family", "subtype", "set_id", "figure_id", "question_id"]
    missing = [c for c in needed if c not in table.columns]
    if missing or table.empty:
        raise ValueError(f"hallusion_metrics: empty table or missing column(s) {missing}")
    rows = table.assign(correct=table["correct"].astype(bool))
    return {
        "overall": hallusion_scores(rows),
        "category": {str(k): hallusion_scores(g) for k, g in rows.groupby("family", sort=True)},
        "l2_category": {str(k): hallusion_scores(g) for k, g in rows.groupby("subtype", sort=True)},
    }


def score_benchmark(predictions: pd.DataFrame, benchmark: str) -> dict[str, Any]:
    """The benchmark's metrics of a prediction table (``answer_table`` output).

    pope: ``pope_metrics``; hallusionbench: ``hallusion_metrics``; vstar / hrbench:
    ``accuracy_by_family`` (per category and the overall micro-average).
    """
    if benchmark == "pope":
        return pope_metrics(predictions)
    if benchmark == "hallusionbench":
        return hallusion_metrics(predictions)
    if benchmark in ("vstar", "hrbench"):
        return accuracy_by_family(predictions)
    raise ValueError(
        f"score_benchmark: unknown benchmark {benchmark!r}; known: {sorted(BENCHMARK_LOADERS)}"
    )


def shuffle_options(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """A copy with each MCQ row's options permuted (answer letter and prompt updated).

    The permutation of a row depends only on ``seed`` and its ``record_id``. Yes/no rows are
    unchanged. Prompts are rebuilt with the row's ``benchmark`` layout (letter mode).
    """
    out = table.copy()
    rows = out.to_dict("records")
    for row in rows:
        options = list(row["options"])
        if not options:
            continue
        entropy = [int(seed), zlib.crc32(str(row["record_id"]).encode())]
        order = np.random.default_rng(np.random.SeedSequence(entropy)).permutation(len(options))
        row["options"] = [options[int(i)] for i in order]
        row["answer"] = OPTION_LETTERS[row["options"].index(row["answer_text"])]
        if "prompt" in row:
            prompt = BENCHMARK_PROMPTS.get(str(row.get("benchmark")), letter_prompt)
            row["prompt"] = prompt(row["question"], row["options"])
    return pd.DataFrame(rows, columns=out.columns, index=out.index)
