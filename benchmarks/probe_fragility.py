"""Probe: how much do implanted distractors cost a trained Defender, by distractor kind?

Loads a saved Defender (the pipeline's base Defender by default), takes held-out extended
records and implants distractors under several settings (grid-aligned or anywhere, size range,
how many at once), then compares greedy accuracy on the clean and the edited images of the same
questions. Every edit is verified on the scene graph to keep the recorded answer.

    python benchmarks/probe_fragility.py --records 600 --variants grid28 free_large cells_large
    python benchmarks/probe_fragility.py --defender data/06_models/defender_sft \
        --prompt_style protocol

Variants (``VARIANTS``): placement grid (28: inside one image token like world objects, 0:
anywhere, -1: centred on a 28-px cell centre like the self-play planner's regions), side range
in px and number of distractors. Results: benchmarks/results/fragility.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from aot.attacker.planner import _clip_box, _spec
from aot.bootstrap import make_filler, propose_distractors, scenes_from_table
from aot.bootstrap.fillers import Filler
from aot.bootstrap.implant import box_is_free, dilate
from aot.bootstrap.pairs import correct_rate
from aot.defender import Defender
from aot.rewards.answer import make_prompt
from aot.world import Edit, Scene, apply_edit, edit_preserves_answer

VARIANTS: dict[str, dict] = {
    "grid28": dict(grid=28, size_range=(14, 26), count=1),
    "free": dict(grid=0, size_range=(14, 26), count=1),
    "free_large": dict(grid=0, size_range=(22, 40), count=1),
    "multi3": dict(grid=28, size_range=(14, 26), count=3),
    "free_multi3": dict(grid=0, size_range=(14, 26), count=3),
    "multi6": dict(grid=28, size_range=(14, 26), count=6),
    "multi10": dict(grid=28, size_range=(14, 26), count=10),
    "free_multi8": dict(grid=0, size_range=(10, 20), count=8),
    "free_large2": dict(grid=0, size_range=(22, 40), count=2),
    "free_large3": dict(grid=0, size_range=(22, 40), count=3),
    "free_xl": dict(grid=0, size_range=(32, 52), count=1),
    "grid_large": dict(grid=28, size_range=(22, 40), count=1),
    # The self-play planner's regions: boxes centred on the 6 x 6 cell centres.
    "cells_medium": dict(grid=-1, size_range=(33, 33), count=1),
    "cells_large": dict(grid=-1, size_range=(45, 45), count=1),
    "tiny": dict(grid=0, size_range=(7, 12), count=1),
    "tiny_multi4": dict(grid=0, size_range=(7, 12), count=4),
}


def _cell_centred(
    record: dict,
    scene: Scene,
    image: Image.Image,
    filler: Filler,
    rng: np.random.Generator,
    side: int,
) -> tuple[Image.Image, Scene]:
    """One proposal moved to a box of ``side`` centred on a random 28-px cell centre, as the
    self-play planner's regions are (``aot.attacker.planner``)."""
    targets = [dilate(b, 4) for b in record["target_boxes"]]
    cells = scene.width // 28
    for _ in range(40):
        props = propose_distractors(scene, record, rng, n=1, size_range=(14, 26), grid=28)
        if not props:
            return image, scene
        p = props[0]
        cx, cy = (rng.integers(cells, size=2) + 0.5) * 28
        box = _clip_box(float(cx), float(cy), side, scene.width, scene.height)
        edit = Edit("add", box, p.shape, p.color)
        if box_is_free(box, scene, targets, 2) and edit_preserves_answer(
            scene, edit, _spec(record)
        ):
            return filler.fill_box(image, box, p.prompt, rng), apply_edit(scene, edit, size=p.size)
    return image, scene


def edit_record(
    record: dict,
    scene: Scene,
    image: Image.Image,
    filler: Filler,
    rng: np.random.Generator,
    grid: int,
    size_range: tuple[int, int],
    count: int,
) -> Image.Image:
    """The image with up to ``count`` distractors, each verified on the graph edited so far."""
    for _ in range(count):
        if grid < 0:
            image, scene = _cell_centred(record, scene, image, filler, rng, size_range[0])
            continue
        props = propose_distractors(
            scene, record, rng, n=1, size_range=size_range, margin=4, hard_prob=0.8, grid=grid
        )
        if not props:
            break
        p = props[0]
        image = filler.fill_box(image, p.box, p.prompt, rng)
        scene = apply_edit(scene, Edit("add", p.box, p.shape, p.color), size=p.size)
    return image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--defender", default="data/06_models/defender_base")
    ap.add_argument("--data", default="data/02_intermediate/extended")
    ap.add_argument("--records", type=int, default=400)
    ap.add_argument("--split", default="test")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--prompt_style", default="short")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = Path(args.data)
    records = pd.read_parquet(data / "records.parquet")
    records = records[records["split"] == args.split]
    records = records.sample(n=min(args.records, len(records)), random_state=args.seed)
    graphs = {s.scene_id: s for s in scenes_from_table(pd.read_parquet(data / "scenes.parquet"))}
    defender = Defender.from_pretrained(args.defender)
    filler = make_filler({"kind": "procedural", "world": {"image_size": 112, "grid": 28}})
    rows = records.to_dict("records")
    clean = [Image.open(data / "images" / f"{r['image']}.png").convert("RGB") for r in rows]
    prompts = [
        make_prompt(r["question"], list(r["options"]), args.prompt_style, "word") for r in rows
    ]

    def accuracy(images: list[Image.Image]) -> pd.Series:
        answers = defender.generate(images, prompts, max_new_tokens=12, batch_size=64)
        hits = [correct_rate(a, r, "word") for a, r in zip(answers, rows, strict=True)]
        return pd.Series(hits, index=[r["family"] for r in rows])

    out = {"clean": accuracy(clean)}
    for name in args.variants:
        v = VARIANTS[name]
        t0 = time.time()
        edited = [
            edit_record(
                r,
                graphs[r["scene_id"]],
                im,
                filler,
                np.random.default_rng([args.seed, i]),
                v["grid"],
                v["size_range"],
                v["count"],
            )
            for i, (r, im) in enumerate(zip(rows, clean, strict=True))
        ]
        out[name] = accuracy(edited)
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    table = pd.DataFrame({k: s.groupby(level=0).mean() for k, s in out.items()})
    table.loc["mean"] = [s.mean() for s in out.values()]
    print(table.round(3).to_string())
    print(json.dumps({k: round(float(s.mean()), 3) for k, s in out.items()}))


if __name__ == "__main__":
    main()
