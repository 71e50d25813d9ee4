"""Does the Defender look at the image? Its greedy answers on the real image, on a blank one and
on another scene's image.

For each Defender folder, the same held-out test questions (``--per_family`` per family, drawn
with ``--seed`` from the extended records of the default run) are answered through the
evaluation's own greedy protocol (``aot.evaluation.protocols.answer_table``, word answers) three
times: with the scene's image; with a blank image of the same size in the scene's background
colour (its top-left pixel); with the image of another test scene (a fixed permutation). A
Defender that reads the image answers differently when the image changes; one that answers from
the question alone gives the same answer on all three and scores the answer prior. An unparsed
answer never counts as "the same", so the "same answer" shares are lower bounds.

Run after ``dvc repro`` (it reads data/02_intermediate/extended and data/06_models)::

    .venv/bin/python benchmarks/probe_image_dependence.py data/06_models/defender_sft
    # the base Defender learned the world on short prompts: ask it with those
    .venv/bin/python benchmarks/probe_image_dependence.py data/06_models/defender_base \
        --style short --out /tmp/base.md

Writes benchmarks/results/image_dependence.md (``--out``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from aot.defender import Defender
from aot.evaluation.protocols import answer_table
from aot.rewards import make_prompt
from report_notes import write_report

ROOT = Path(__file__).resolve().parents[1]
EXTENDED = ROOT / "data" / "02_intermediate" / "extended"
FAMILIES = ("attribute", "count", "existence", "spatial")


def test_questions(per_family: int, seed: int) -> pd.DataFrame:
    records = pd.read_parquet(EXTENDED / "records.parquet")
    test = records[records["split"] == "test"]
    return pd.concat(
        [g.sample(min(per_family, len(g)), random_state=seed) for _, g in test.groupby("family")]
    ).reset_index(drop=True)


def image_sets(keys: list[str], seed: int) -> dict[str, dict[str, Image.Image]]:
    real = {k: Image.open(EXTENDED / "images" / f"{k}.png").convert("RGB") for k in keys}
    blank = {}
    for key, image in real.items():
        pixels = np.asarray(image)
        blank[key] = Image.fromarray(np.broadcast_to(pixels[0, 0], pixels.shape).copy())
    order = np.random.default_rng(seed).permutation(len(keys))
    other = {key: real[keys[j]] for key, j in zip(keys, order, strict=True)}
    return {"real": real, "blank": blank, "other_scene": other}


def probe(folder: Path, questions: pd.DataFrame, images: dict) -> dict[str, dict[str, float]]:
    defender = Defender.from_pretrained(folder)
    tables = {
        name: answer_table(defender, questions, pictures, mode="word", protocol="greedy")
        for name, pictures in images.items()
    }
    family = tables["real"]["family"]
    row: dict[str, dict[str, float]] = {}
    for name, table in tables.items():
        row[f"accuracy, {name} image"] = table.groupby("family")["correct"].mean().to_dict()
        row[f"accuracy, {name} image"]["overall"] = float(table["correct"].mean())
    real = tables["real"]
    # the mean over answers of each answer's accuracy: a constant answer scores 1 / #answers
    balanced = {}
    for fam, group in real.groupby("family"):
        by_answer = group.groupby("answer_text")["correct"].agg(["mean", "size"])
        balanced[fam] = float(by_answer.loc[by_answer["size"] >= 5, "mean"].mean())
    balanced["overall"] = float(np.mean(list(balanced.values())))
    row["balanced accuracy (mean over answers), real image"] = balanced
    for name in ("blank", "other_scene"):
        same = pd.Series(
            tables[name]["extracted"].to_numpy() == tables["real"]["extracted"].to_numpy()
        )
        key = f"same answer as on the real image, {name}"
        row[key] = same.groupby(family.to_numpy()).mean().to_dict()
        row[key]["overall"] = float(same.mean())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--per_family", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--style",
        default="protocol",
        help="prompt style: protocol (the evaluation's) or short (what pretraining teaches)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/image_dependence.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    questions = test_questions(args.per_family, args.seed)
    if args.style != "protocol":
        questions["prompt"] = [
            make_prompt(q, list(o), args.style, "word")
            for q, o in zip(questions["question"], questions["options"], strict=True)
        ]
    images = image_sets(sorted(set(questions["image"].astype(str))), args.seed)
    lines = [
        "# Does the Defender look at the image?",
        "",
        f"`benchmarks/probe_image_dependence.py`, {len(questions)} held-out test questions "
        f"({args.per_family} per family, seed {args.seed}), greedy, word answers, "
        f"{args.style} prompts, "
        f"{os.cpu_count()} cores. Blank: the scene's background colour everywhere; other scene: "
        "another test scene's image.",
        "",
        "| Defender | measure | " + " | ".join(FAMILIES) + " | overall |",
        "|---|---|" + "---|" * (len(FAMILIES) + 1),
    ]
    for folder in args.folders:
        for measure, values in probe(folder, questions, images).items():
            cells = [f"{values.get(f, float('nan')):.2f}" for f in (*FAMILIES, "overall")]
            lines.append(
                f"| {folder.name if folder.name != 'defender' else folder.parent.name} "
                f"| {measure} | " + " | ".join(cells) + " |"
            )
            print(lines[-1], flush=True)
    write_report(args.out, "\n".join(lines))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
