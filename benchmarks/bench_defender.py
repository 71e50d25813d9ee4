"""Tiny Defender speed by image size: generation and one training step, on this machine's CPU.

Run: `.venv/bin/python benchmarks/bench_defender.py [--sizes 112 168 224] [--threads 1]`.
Writes a Markdown table to stdout (through logging) and to benchmarks/results/defender.md.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from PIL import Image

from aot.defender import Defender, TinyDefenderConfig, build_tiny_defender
from aot.defender.model import user_content
from aot.rewards import build_prompt, target_completion
from report_notes import write_report

logger = logging.getLogger("bench_defender")
CORPUS = ["Where is the red circle relative to the blue square?", "left right above below"] * 4


def _time(fn, repeats: int) -> float:  # noqa: ANN001
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench(size: int, batch: int, repeats: int) -> dict[str, float]:
    config = TinyDefenderConfig(max_pixels=max(size * size, 56 * 56))
    defender: Defender = build_tiny_defender(config, CORPUS, seed=0)
    images = [Image.new("RGB", (size, size), "gray") for _ in range(batch)]
    prompt = build_prompt(
        "Where is the red circle relative to the blue square?", ["left", "right", "above", "below"]
    )
    gen = _time(
        lambda: defender.generate(images, [prompt] * batch, max_new_tokens=8, batch_size=batch),
        repeats,
    )
    proc = defender.processor
    messages = [
        [
            {"role": "user", "content": user_content(prompt)},
            {"role": "assistant", "content": [{"type": "text", "text": target_completion("B")}]},
        ]
    ] * batch
    texts = [proc.apply_chat_template(m) for m in messages]
    inputs = proc(images=images, text=texts, padding=True, return_tensors="pt")
    model = defender.model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        optim.step()
        optim.zero_grad()

    train = _time(step, repeats)
    tokens = int(inputs["image_grid_thw"].prod(-1)[0]) // 4
    return {
        "size": size,
        "image_tokens": tokens,
        "seq_len": inputs["input_ids"].shape[1],
        "gen_s": gen,
        "train_s": train,
        "params": defender.num_parameters(),
        "batch": batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 168, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    rows = [bench(s, args.batch, args.repeats) for s in args.sizes]
    lines = [
        f"Tiny Defender ({rows[0]['params']:,} parameters), batch {args.batch}, {args.threads} thread(s)",
        "",
        "| image | image tokens | sequence | greedy 8 tokens (batch) | samples/s | train step (batch) | samples/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} px | {r['image_tokens']} | {r['seq_len']} | {r['gen_s'] * 1000:.0f} ms | "
            f"{r['batch'] / r['gen_s']:.0f} | {r['train_s'] * 1000:.0f} ms | {r['batch'] / r['train_s']:.0f} |"
        )
    table = "\n".join(lines)
    logger.info(table)
    out = Path(__file__).parent / "results" / "defender.md"
    out.parent.mkdir(exist_ok=True)
    write_report(out, table)


if __name__ == "__main__":
    main()
