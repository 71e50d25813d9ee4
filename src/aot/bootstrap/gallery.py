"""A gallery of AOT-SFT pairs for eyeballing: clean | edited, with the Defender's answers."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

_WRAP = 44


def _load(images: Mapping[str, Any], key: str) -> Any:
    loaded = images[key]
    return loaded() if callable(loaded) else loaded


def _outline(ax: Any, box: Sequence[int], color: str, style: str = "-") -> None:
    x0, y0, x1, y1 = (int(v) for v in box)
    ax.add_patch(
        Rectangle(
            (x0 - 0.5, y0 - 0.5),
            x1 - x0,
            y1 - y0,
            fill=False,
            edgecolor=color,
            linewidth=1.2,
            linestyle=style,
        )
    )


def _short(answers: Sequence[str] | None, limit: int = 3) -> str:
    """A few answers, each cut short, so that long generations keep titles readable."""
    if answers is None:
        return "-"
    shown = [repr(a.strip()[:14]) for a in list(answers)[:limit]]
    more = f" +{len(answers) - limit}" if len(answers) > limit else ""
    return ", ".join(shown) + more


def _truth(row: Mapping[str, Any]) -> str:
    options = list(row["options"])
    return f"{row['answer']}. {row['answer_text']}" if options else str(row["answer_text"])


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, _WRAP))


def plot_pair_gallery(
    pairs: pd.DataFrame,
    clean_images: Mapping[str, Any],
    edited_images: Mapping[str, Any],
    answers: Mapping[str, tuple[Sequence[str], Sequence[str]]] | None = None,
    n: int = 6,
) -> Figure:
    """``n`` rows of clean | edited panels (targets white, distractor red dashed).

    ``answers`` maps ``edited_image`` to (clean answers, edited answers); when None the pairs'
    ``clean_answers`` / ``edited_answers`` columns are used if present.
    """
    picked = pairs.head(n).to_dict("records")
    rows = max(1, len(picked))
    fig = Figure(figsize=(7.0, 3.9 * rows))
    for i, row in enumerate(picked):
        got = (answers or {}).get(row["edited_image"])
        clean_ans, edited_ans = (
            got if got else (row.get("clean_answers"), row.get("edited_answers"))
        )
        panels = (
            (_load(clean_images, row["image"]), f"clean: {_short(clean_ans)}"),
            (_load(edited_images, row["edited_image"]), f"edited: {_short(edited_ans)}"),
        )
        for j, (image, caption) in enumerate(panels):
            ax = fig.add_subplot(rows, 2, 2 * i + j + 1)
            ax.imshow(image)
            for box in row["target_boxes"]:
                _outline(ax, box, "white")
            if j == 1:
                _outline(ax, row["distractor_box"], "red", "--")
            head = f"[{row['family']}] {row['question']} GT: {_truth(row)}"
            extra = f" | {row['strategy']}: {row['distractor_prompt']}" if j == 1 else ""
            ax.set_title(_wrap(head + extra), fontsize=7)
            ax.set_xlabel(_wrap(caption), fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("AOT-SFT pairs: targets (white), distractor (red dashed)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the suptitle
    return fig
