"""Shared helpers of the evaluation tests: scripted Defenders, tiny images, benchmark fixtures.

Benchmark fixtures are text (``fixtures/*.json``); TSVs with base64 PNGs and the V* images are
generated at runtime into ``tmp_path`` so no binary file is committed.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"


class ScriptedDefender:
    """A fake Defender with ``Defender.generate``'s signature.

    ``script(prompt, k, rng)`` returns the reply to the ``k``-th time (0-based) ``prompt`` is
    asked, each of a call's ``n`` samples counting once; ``rng`` is seeded by the call's
    ``seed``. Every call is recorded in ``calls``.
    """

    def __init__(self, script: Callable[[str, int, np.random.Generator], str]) -> None:
        self.script = script
        self.calls: list[dict[str, Any]] = []
        self.asked: dict[str, int] = defaultdict(int)

    def generate(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int = 16,
        batch_size: int = 16,
        seed: int | None = None,
        progress: bool = False,
    ) -> list[list[str]]:
        assert len(images) == len(prompts)
        assert all(isinstance(im, Image.Image) and im.mode == "RGB" for im in images)
        self.calls.append(
            {"prompts": list(prompts), "temperature": temperature, "seed": seed, "n": n}
        )
        rng = np.random.default_rng(seed)
        out = []
        for prompt in prompts:
            k = self.asked[prompt]
            self.asked[prompt] += n
            out.append([self.script(prompt, k + j, rng) for j in range(n)])
        return out


@pytest.fixture
def scripted() -> type[ScriptedDefender]:
    """The ScriptedDefender class."""
    return ScriptedDefender


def png_base64(rgb: Sequence[int], size: Sequence[int]) -> str:
    """A flat-colour PNG of ``size`` (w, h), base64-encoded."""
    buffer = io.BytesIO()
    Image.new("RGB", tuple(size), tuple(rgb)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def fixture_rows(name: str) -> list[dict[str, Any]]:
    """The rows of ``fixtures/<name>.json`` with image specs turned into base64 PNGs."""
    rows = json.loads((FIXTURES / f"{name}.json").read_text())
    for row in rows:
        if isinstance(row.get("image"), dict):
            row["image"] = png_base64(row["image"]["rgb"], row["image"]["size"])
    return rows


@pytest.fixture
def bench_tsv(tmp_path: Path) -> Callable[..., Path]:
    """``bench_tsv(name, edit=None)``: the fixture written as a TSV; ``edit(rows)`` may change
    the row dicts (or the list) before writing."""

    def write(name: str, edit: Callable[[list[dict[str, Any]]], Any] | None = None) -> Path:
        rows = fixture_rows(name)
        if edit is not None:
            edit(rows)
        path = tmp_path / f"{name}.tsv"
        pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
        return path

    return write


@pytest.fixture
def vstar_root(tmp_path: Path) -> Path:
    """The V* fixture folder copied to ``tmp_path`` with a PNG next to every json."""
    root = tmp_path / "vstar"
    shutil.copytree(FIXTURES / "vstar", root)
    for file in root.glob("*/*.json"):
        spec = json.loads(file.read_text())["_fixture"]
        Image.new("RGB", tuple(spec["size"]), tuple(spec["image_rgb"])).save(
            file.with_suffix(".png")
        )
    return root


def word_records() -> pd.DataFrame:
    """Four world-style records (word-mode MCQ and yes/no) about two images."""
    return pd.DataFrame(
        [
            {
                "record_id": "s0-attribute-0",
                "image": "s0",
                "family": "attribute",
                "subtype": "",
                "question": "What color is the circle?",
                "options": ["red", "blue", "green"],
                "answer": "A",
                "answer_text": "red",
                "target_boxes": [[2, 2, 10, 10]],
            },
            {
                "record_id": "s0-count-0",
                "image": "s0",
                "family": "count",
                "subtype": "",
                "question": "How many stars are there?",
                "options": ["1", "2", "3"],
                "answer": "B",
                "answer_text": "2",
                "target_boxes": [[20, 20, 26, 26], [30, 4, 36, 10]],
            },
            {
                "record_id": "s1-existence-0",
                "image": "s1",
                "family": "existence",
                "subtype": "random",
                "question": "Is there a red square in the image?",
                "options": [],
                "answer": "Yes",
                "answer_text": "Yes",
                "target_boxes": [[5, 5, 12, 12]],
            },
            {
                "record_id": "s1-spatial-0",
                "image": "s1",
                "family": "spatial",
                "subtype": "",
                "question": "Where is the star relative to the cross?",
                "options": ["left", "right", "above", "below"],
                "answer": "C",
                "answer_text": "above",
                "target_boxes": [[20, 2, 28, 10], [20, 20, 28, 28]],
            },
        ]
    )


@pytest.fixture
def records() -> pd.DataFrame:
    """Four world-style records (see ``word_records``)."""
    return word_records()


@pytest.fixture
def images() -> dict[str, Any]:
    """Random 40x40 images for keys s0 (stored) and s1 (a lazy callable)."""
    rng = np.random.default_rng(7)
    s0 = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "RGB")
    s1 = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "RGB")
    return {"s0": s0, "s1": lambda: s1}
