"""The tiny Qwen-Image-Edit Attacker on this machine's CPU: stock pipeline vs native-size edits,
and the time per Flow-GRPO step.

Run: `OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_qwen_image_edit.py
[--threads 2] [--batch 8] [--sampling-steps 10] [--rl-steps 2] [--stock-steps 4]
[--stock-calls 2] [--quick]`.

The editor is ``aot.attacker.qwen_edit.build_tiny_qwen_image_edit`` (random weights built from
configs: 1 joint block, 2 heads of 16, a 4x VAE with 4 latent channels, the tiny Qwen2.5-VL of
``aot.defender`` as text encoder); images are ``--image-size`` px scenes of ``aot.world``.

1. Stock: ``QwenImageEditPipeline.__call__`` (one scene, "add a red circle", output at the
   scene's size, ``--stock-steps`` steps, no CFG), seconds per call, split into the VAE encode,
   the text encoder, the transformer and the rest (decode, pre/post-processing), and the sizes
   the pipeline really used: it resizes the condition image to about 1024 x 1024 whatever the
   requested output size (stack.md G7), so the transformer attends over far more image tokens
   than the edit has.
2. Native: ``run_qwen_edit_pass`` (what Flow-GRPO samples with): a batch of ``--batch`` scenes
   encoded at their own size, a 28 px box off the objects, ``--sampling-steps`` SDE steps at
   noise 0.7; edits per second after one warm-up pass, over ``--repeats`` passes.
3. RL: seconds per ``FlowGRPOTrainer.step()`` at the default ``FlowGRPOConfig`` (4 prompts x
   G=8, 10 SDE steps, KL reference, 2 minibatches) with a scripted reward (redness in the box,
   so the time is the editor's, not a Defender's), full fine-tuning and LoRA r=4 on the
   attention projections; split into sampling, reward and update (the step's own timings).

Writes Markdown to stdout (logging) and to ``--out`` (benchmarks/results/qwen_image_edit.md;
with ``--quick``, /tmp/qwen_image_edit_quick.md unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from aot.attacker.flow_grpo import FlowGRPOTrainer
from aot.attacker.flow_grpo_config import FlowGRPOConfig
from aot.attacker.flow_sampler import QwenImageEditEditor
from aot.attacker.qwen_edit import (
    QWEN_IMAGE_LORA_TARGETS,
    build_tiny_qwen_image_edit,
    model_size,
    run_qwen_edit_pass,
)
from aot.attacker.rollout import Rollout, build_items
from aot.world import QuestionConfig, WorldConfig, make_questions, sample_scene
from report_notes import write_report

logger = logging.getLogger("bench_qwen_image_edit")

LORA = {"r": 4, "lora_alpha": 4, "target_modules": list(QWEN_IMAGE_LORA_TARGETS)}
PROMPTS = ("add a red circle", "replace it with a blue star", "remove the object")
BOX = 28
# --quick: every part at toy size so the script runs in about a minute on one thread.
QUICK_RL = {"prompts_per_step": 2, "group_size": 2, "sampling_steps": 3, "minibatches": 1}


class Probe:
    """Records what the pipeline's parts see and how long they take: the VAE encode's input
    size (a wrapper of ``pipe._encode_vae_image``), the text encoder's image grid and the
    transformer's token counts (forward hooks), with the wall time of each part."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.vae_sizes: list[tuple[int, ...]] = []
        self.text_grids: list[tuple[int, ...]] = []
        self.tokens: list[tuple[int, int]] = []  # (noisy + image tokens, text tokens)
        self.seconds = {"vae_encode": 0.0, "text_encoder": 0.0, "transformer": 0.0}
        self.transformer_calls = 0
        self._start: dict[str, float] = {}
        self._handles: list[Any] = []
        self._orig = pipe._encode_vae_image

    def __enter__(self) -> Probe:
        def encode(*args: Any, **kwargs: Any) -> torch.Tensor:
            image = kwargs.get("image", args[0] if args else None)
            self.vae_sizes.append(tuple(image.shape))
            t = time.perf_counter()
            out = self._orig(*args, **kwargs)
            self.seconds["vae_encode"] += time.perf_counter() - t
            return out

        self.pipe._encode_vae_image = encode

        def text_pre(_: Any, args: tuple, kwargs: dict) -> None:
            grid = kwargs.get("image_grid_thw")
            if grid is not None:
                self.text_grids.extend(tuple(int(v) for v in g) for g in grid.tolist())
            self._start["text_encoder"] = time.perf_counter()

        def transformer_pre(_: Any, args: tuple, kwargs: dict) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            text = kwargs.get("encoder_hidden_states")
            self.tokens.append((int(hidden.shape[1]), 0 if text is None else int(text.shape[1])))
            self.transformer_calls += 1
            self._start["transformer"] = time.perf_counter()

        def post(name: str) -> Any:
            def hook(*_: Any) -> None:
                self.seconds[name] += time.perf_counter() - self._start.pop(name)

            return hook

        self._handles = [
            self.pipe.text_encoder.register_forward_pre_hook(text_pre, with_kwargs=True),
            self.pipe.text_encoder.register_forward_hook(post("text_encoder")),
            self.pipe.transformer.register_forward_pre_hook(transformer_pre, with_kwargs=True),
            self.pipe.transformer.register_forward_hook(post("transformer")),
        ]
        return self

    def __exit__(self, *_: Any) -> None:
        del self.pipe._encode_vae_image  # back to the class's method
        for handle in self._handles:
            handle.remove()


def free_box(scene: Any, size: int, box: int = BOX) -> tuple[int, int, int, int]:
    """A ``box`` px square on a ``box`` px grid that overlaps no object (else the corner)."""
    taken = [o.box for o in scene.objects]
    for y in range(0, size - box + 1, box):
        for x in range(0, size - box + 1, box):
            b = (x, y, x + box, y + box)
            if all(b[2] <= t[0] or t[2] <= b[0] or b[3] <= t[1] or t[3] <= b[1] for t in taken):
                return b
    return (0, 0, box, box)


def scenes(n: int, size: int, seed: int) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, WorldConfig(image_size=size), f"qie_{i}") for i in range(n)]


def redness(rollout: Rollout) -> dict[str, np.ndarray]:
    """Scripted reward: how red the box is (as in tests/attacker/test_qwen_edit.py)."""
    out = []
    for plan, edited in zip(rollout.plans, rollout.edited, strict=True):
        x0, y0, x1, y1 = plan.box
        box = edited[y0:y1, x0:x1].astype(float) / 255
        out.append(float((box[..., 0] - (box[..., 1] + box[..., 2]) / 2).mean()))
    return {"reward": np.array(out)}


def bench_stock(args: argparse.Namespace) -> list[str]:
    pipe = build_tiny_qwen_image_edit(seed=args.seed)
    scene = scenes(1, args.image_size, args.seed)[0]
    image = scene.render()
    size = args.image_size
    times, probes = [], []
    for i in range(args.stock_calls):
        with Probe(pipe) as probe:
            t = time.perf_counter()
            out = pipe(
                image=image,
                prompt=PROMPTS[0],
                height=size,
                width=size,
                num_inference_steps=args.stock_steps,
                true_cfg_scale=1.0,
                generator=torch.Generator().manual_seed(args.seed + i),
                output_type="np",
            )
            times.append(time.perf_counter() - t)
        probes.append(probe)
        logger.info(
            "  stock call %d: %.2f s, output %s, finite %s",
            i + 1,
            times[-1],
            out.images.shape,
            bool(np.isfinite(out.images).all()),
        )
    p = probes[-1]
    vae = p.vae_sizes[0]
    grid = p.text_grids[0] if p.text_grids else None
    mult = int(pipe.vae_scale_factor) * 2
    noisy = (size // mult) ** 2
    total_tokens, text_tokens = p.tokens[0]
    t_call = statistics.median(times)
    rest = times[-1] - sum(p.seconds.values())
    return [
        "## 1. Stock `QwenImageEditPipeline.__call__`",
        "",
        f"One {size} x {size} scene, prompt {PROMPTS[0]!r}, `height=width={size}`, "
        f"{args.stock_steps} steps, `true_cfg_scale=1` (no CFG), `output_type='np'`; "
        f"{args.stock_calls} call(s), split of the last one.",
        "",
        "| s/call | s/denoising step | VAE encode s | text encoder s | transformer s "
        "| rest s (decode, processing) |",
        "|---|---|---|---|---|---|",
        f"| {t_call:.2f} | {t_call / args.stock_steps:.2f} | {p.seconds['vae_encode']:.2f} | "
        f"{p.seconds['text_encoder']:.2f} | {p.seconds['transformer']:.2f} "
        f"({p.transformer_calls} calls) | {rest:.2f} |",
        "",
        f"What it really encoded: the VAE got the condition image at **{vae[-2]} x {vae[-1]}** "
        f"(input {vae}) although the output is {out.images.shape[1]} x {out.images.shape[2]}; "
        f"the transformer saw {total_tokens} image tokens per call ({noisy} noisy + "
        f"{total_tokens - noisy} condition) and {text_tokens} text tokens; the text encoder saw "
        f"the image as a {grid} (t, h, w) patch grid of 14 px (its processor resizes on its own, "
        "to at most 50176 px).",
        "",
    ]


def bench_native(args: argparse.Namespace) -> list[str]:
    pipe = build_tiny_qwen_image_edit(seed=args.seed)
    editor = QwenImageEditEditor(pipe.transformer)
    batch = scenes(args.batch, args.image_size, args.seed + 1)
    images = [torch.from_numpy(np.array(s.render())).permute(2, 0, 1) for s in batch]
    boxes = [free_box(s, args.image_size) for s in batch]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]

    def edit(seed: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return run_qwen_edit_pass(
            editor, pipe, images, boxes, prompts, args.sampling_steps, 0.7, gen
        )[0]

    t = time.perf_counter()
    edit(args.seed)
    warm = time.perf_counter() - t
    times = []
    for r in range(args.repeats):
        with Probe(pipe) as probe:
            t = time.perf_counter()
            out = edit(args.seed + 1 + r)
            times.append(time.perf_counter() - t)
        logger.info("  native pass %d: %.2f s for %d edits", r + 1, times[-1], len(out))
    p = probe
    t_pass = statistics.median(times)
    mh, mw = model_size(args.image_size, args.image_size, int(pipe.vae_scale_factor) * 2)
    total_tokens, text_tokens = p.tokens[0]
    rest = times[-1] - sum(p.seconds.values())
    return [
        "## 2. Native-size `run_qwen_edit_pass` (the Flow-GRPO sampler)",
        "",
        f"A batch of {args.batch} {args.image_size} px scenes, {BOX} px boxes off the objects, "
        f"{args.sampling_steps} SDE steps at noise 0.7 (no KL reference); one warm-up pass "
        f"({warm:.2f} s), then {args.repeats} timed pass(es), split of the last one.",
        "",
        "| edits/s | s/pass | s/edit | s/denoising step/edit | VAE encode s | text encoder s "
        "| transformer s | rest s (decode, SDE, paste) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {args.batch / t_pass:.2f} | {t_pass:.2f} | {t_pass / args.batch:.3f} | "
        f"{t_pass / args.batch / args.sampling_steps:.4f} | {p.seconds['vae_encode']:.2f} | "
        f"{p.seconds['text_encoder']:.2f} | {p.seconds['transformer']:.2f} "
        f"({p.transformer_calls} calls) | {rest:.2f} |",
        "",
        f"Encoded at the image's own size: VAE input {p.vae_sizes[0]} (model size {mh} x {mw}), "
        f"{total_tokens} image tokens per transformer call (noisy + condition), {text_tokens} "
        f"text tokens; text encoder grid {p.text_grids[0] if p.text_grids else None}.",
        "",
    ]


def rl_records(n_scenes: int, size: int, seed: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows, images = [], {}
    for i in range(n_scenes):
        scene = sample_scene(rng, WorldConfig(image_size=size), f"qie_rl_{i}")
        images[scene.scene_id] = scene.render()
        for record in make_questions(scene, rng, QuestionConfig())[:2]:
            rows.append({**record, "graph": json.dumps(scene.to_dict())})
    return pd.DataFrame(rows), images


def bench_rl(args: argparse.Namespace) -> list[str]:
    overrides = dict(QUICK_RL) if args.quick else {}
    if args.rl_sampling_steps is not None:
        overrides["sampling_steps"] = args.rl_sampling_steps
    records, images = rl_records(args.rl_scenes, args.image_size, args.seed + 2)
    lines = [
        "## 3. Flow-GRPO step (`FlowGRPOTrainer.step()`)",
        "",
    ]
    table = [
        "| variant | edits/step | SDE steps | trainable params | sampling s | reward s | update s "
        "| step s | steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cfg = None
    for name, extra in (("full", {}), ("lora r=4", {"lora": LORA})):
        cfg = FlowGRPOConfig.from_dict({**overrides, **extra})
        pipe = build_tiny_qwen_image_edit(seed=args.seed)
        items = build_items(records, images, cfg.planner)
        trainer = FlowGRPOTrainer(pipe, items, cfg, redness, seed=args.seed)
        n_trainable = sum(p.numel() for p in trainer.trainable)
        rows = []
        for _ in range(args.rl_steps):
            row = trainer.step()
            rows.append(row)
            logger.info(
                "  %s step %d: sampling %.2f s, reward %.2f s, update %.2f s, step %.2f s",
                name,
                row["step"],
                row["t_sample"],
                row["t_reward"],
                row["t_update"],
                row["t_step"],
            )
        t = pd.DataFrame(rows)[["t_sample", "t_reward", "t_update", "t_step"]].median()
        table.append(
            f"| {name} | {cfg.prompts_per_step * cfg.group_size} | {cfg.sampling_steps} | "
            f"{n_trainable:,} | {t.t_sample:.2f} | {t.t_reward:.3f} | {t.t_update:.2f} | "
            f"{t.t_step:.2f} | {len(rows)} |"
        )
    assert cfg is not None
    setting = "the default `FlowGRPOConfig`" if not overrides else f"`FlowGRPOConfig` + {overrides}"
    lines += [
        f"{setting}: {cfg.prompts_per_step} prompts x G={cfg.group_size}, {cfg.sampling_steps} "
        f"SDE steps at noise {cfg.noise_level} ({cfg.sampling_steps - 1} recorded), "
        f"beta_kl {cfg.beta_kl} (KL reference: a frozen copy, or the adapters off with LoRA), "
        f"{cfg.minibatches} minibatch(es) over {cfg.train_step_fraction:.0%} of the recorded "
        f"steps; {args.image_size} px scenes ({len(records)} records of {args.rl_scenes} scenes); "
        "scripted reward (box redness): no Defender. Medians over the steps; the step's own "
        "timings (`t_sample`, `t_reward`, `t_update`).",
        "",
        *table,
        "",
    ]
    return lines


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("aot.attacker.flow_grpo", "httpx", "transformers", "diffusers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=168, help="scene size, multiple of 28")
    parser.add_argument("--batch", type=int, default=8, help="native edit batch")
    parser.add_argument("--sampling-steps", type=int, default=10, help="native SDE steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed native passes")
    parser.add_argument("--stock-steps", type=int, default=4)
    parser.add_argument("--stock-calls", type=int, default=2)
    parser.add_argument("--rl-steps", type=int, default=2)
    parser.add_argument(
        "--rl-sampling-steps", type=int, default=None, help="override the config's (default 10)"
    )
    parser.add_argument("--rl-scenes", type=int, default=8, help="2 records per scene")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="toy sizes (smoke, about a minute)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.sampling_steps, args.repeats = 2, 3, 1
        args.stock_steps, args.stock_calls = 2, 1
        args.rl_steps, args.rl_scenes = 1, 2
    if args.stock_steps < 2 or args.sampling_steps < 2:
        # one step: the scheduler's shift_terminal stretch divides by zero (sigma NaN)
        parser.error("--stock-steps and --sampling-steps must be at least 2")
    if args.out is None:
        quick = Path("/tmp/qwen_image_edit_quick.md")
        args.out = quick if args.quick else Path("benchmarks/results/qwen_image_edit.md")
    torch.set_num_threads(args.threads)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    lines = [
        "# Tiny Qwen-Image-Edit Attacker (aot.attacker.qwen_edit) on CPU",
        "",
        f"`build_tiny_qwen_image_edit` (random weights); torch {torch.__version__}, torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs ({affinity} usable), load average at "
        f"start {os.getloadavg()[0]:.2f}{' (--quick: toy sizes)' if args.quick else ''}.",
        "",
    ]
    for name, part in (("stock", bench_stock), ("native", bench_native), ("rl", bench_rl)):
        logger.info("%s ...", name)
        t = time.perf_counter()
        lines += part(args)
        logger.info("%s: %.1f s", name, time.perf_counter() - t)
    text = "\n".join(lines)
    logger.info("\n%s", text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_report(args.out, text)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
