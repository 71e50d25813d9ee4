"""Saving the evaluation's image folders: Pillow's default PNG level against the catalog's.

Run (after `dvc repro evaluation`, which wrote the folders): `.venv/bin/python
benchmarks/bench_png_save.py [--passes 2]`. Loads `evaluation_suite_images` and every
`evaluation_attacked_images_<attacker>` through the project's catalog, then saves each folder
through `aot.datasets.ImageFolderDataset` into a temporary folder twice per pass: with the
catalog's `save_args` and with Pillow's defaults, the order alternating from pass to pass.
Checks that both decode to the same pixels. Writes benchmarks/results/png_save.md; nothing
under data/ changes.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from PIL import Image

from aot.datasets import ImageFolderDataset
from report_notes import write_report

ROOT = Path(__file__).resolve().parents[1]
ATTACKERS = ("cold", "round_1", "round_2", "round_3")
logger = logging.getLogger("bench_png_save")


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/png_save.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env="base") as session:
        context = session.load_context()
        names = ["evaluation_suite_images", *(f"evaluation_attacked_images_{a}" for a in ATTACKERS)]
        folders = {
            name: {k: load() for k, load in context.catalog.load(name).items()} for name in names
        }
        entry = context.config_loader["catalog"][names[0]]
        save_args = entry.get("dataset", {}).get("save_args", {})
    count = sum(len(f) for f in folders.values())
    if count == 0:
        raise SystemExit("no images: run `dvc repro evaluation` first")
    ways = {"catalog": save_args, "Pillow default": {}}
    seconds = dict.fromkeys(ways, 0.0)
    sizes = dict.fromkeys(ways, 0)
    with tempfile.TemporaryDirectory() as tmp:
        for p in range(args.passes):
            order = list(ways) if p % 2 == 0 else list(ways)[::-1]
            for way in order:
                for name, images in folders.items():
                    target = Path(tmp) / way.replace(" ", "_") / name
                    dataset = {"type": "aot.datasets.images.PictureDataset"}
                    if ways[way]:
                        dataset["save_args"] = ways[way]
                    folder = ImageFolderDataset(path=str(target), dataset=dataset)
                    start = time.perf_counter()
                    folder.save(images)
                    seconds[way] += time.perf_counter() - start
                    if p == 0:
                        sizes[way] += folder_bytes(target)
        differing = 0
        for name, images in folders.items():
            for key in images:
                a, b = (
                    np.asarray(Image.open(Path(tmp) / w.replace(" ", "_") / name / f"{key}.png"))
                    for w in ways
                )
                differing += not np.array_equal(a, b)
    lines = [
        "# Saving the evaluation's image folders",
        "",
        f"`benchmarks/bench_png_save.py --passes {args.passes}`: {count} images in "
        f"{len(folders)} folders, saved through `ImageFolderDataset` once per way and pass. "
        f"Catalog `save_args`: `{save_args}`. Images whose pixels differ between the two: "
        f"**{differing}**.",
        "",
        "| way | seconds in all | ms per image | MiB on disk |",
        "|---|---|---|---|",
        *(
            f"| {way} | {seconds[way]:.2f} | {seconds[way] / (count * args.passes) * 1e3:.2f} | "
            f"{sizes[way] / 2**20:.1f} |"
            for way in ways
        ),
    ]
    report = "\n".join(lines)
    logger.info(report)
    write_report(args.out, report)


if __name__ == "__main__":
    main()
