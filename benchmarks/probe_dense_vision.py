"""Vision-only probe: can the tiny Defender's vision tower learn per-token colour and shape?

Trains only the Qwen2.5-VL vision tower (plus a linear readout) on the dense labels of
`aot.defender.dense`, and prints held-out per-token shape and colour accuracy (tokens covered by
one object). Compares the dense loss kinds and tower sizes in minutes.
Measured 2026-11-22, one thread each, two runs at once, 2000 scenes at 112 px, batch 32:
  --loss bce (vision 64x2):  shape 0.31 / 0.60 / 0.60 at steps 200 / 400 / 600
  --loss ce  (vision 64x2):  shape 0.47 / 0.78 / 0.82, then 0.92 at step 800 (159 s)
  --loss ce  --vhidden 128:  shape 0.80 / 0.93 at steps 200 / 400 (2x the time per step)
Colour is 1.00 in every run. Example: `.venv/bin/python benchmarks/probe_dense_vision.py --loss ce`.
"""

import argparse
import time

import numpy as np
import torch

from aot.defender import TinyDefenderConfig, build_tiny_defender
from aot.defender.dense import DENSE_LABELS, dense_targets
from aot.pipelines.bootstrap_dataset.defender_nodes import defender_corpus
from aot.world import COLORS, SHAPES, WorldConfig, sample_scene

p = argparse.ArgumentParser()
p.add_argument("--vhidden", type=int, default=64)
p.add_argument("--vdepth", type=int, default=2)
p.add_argument("--loss", default="bce")
p.add_argument("--steps", type=int, default=600)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--scenes", type=int, default=2000)
p.add_argument("--size", type=int, default=112)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--wd", type=float, default=0.0)
a = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)
world = dict(
    image_size=a.size,
    min_objects=2,
    max_objects=5,
    backgrounds={"plain": 0.5, "textured": 0.3, "photo": 0.2},
    background_strength=0.5,
    grid=28,
)
w = WorldConfig.from_dict(world)
rng = np.random.default_rng(0)
scenes = [sample_scene(rng, w, f"s{i}") for i in range(a.scenes + 300)]
cfg = TinyDefenderConfig(
    hidden_size=128,
    intermediate_size=256,
    num_layers=1,
    vision_hidden_size=a.vhidden,
    vision_depth=a.vdepth,
    vision_heads=a.heads,
    vocab_size=1024,
)
d = build_tiny_defender(cfg, defender_corpus(world, n_scenes=20), seed=0)
vis = d.model.model.visual
proc = d.processor
t0 = time.time()
pix = proc.image_processor(images=[s.render() for s in scenes], return_tensors="pt")
g = pix["image_grid_thw"][0]
npatch = int(g.prod())
pv = pix["pixel_values"].view(len(scenes), npatch, -1)
dense = torch.tensor(np.stack([dense_targets(s) for s in scenes]))  # N, T, L
print(
    "prep",
    round(time.time() - t0, 1),
    "patches",
    npatch,
    "vision params",
    sum(p.numel() for p in vis.parameters()),
    flush=True,
)
nC = len(COLORS)
nS = len(SHAPES)
head = torch.nn.Linear(128, len(DENSE_LABELS))
opt = torch.optim.AdamW(
    list(vis.parameters()) + list(head.parameters()), lr=a.lr, weight_decay=a.wd
)


def fwd(idx):
    x = pv[idx].reshape(-1, pv.shape[-1])
    out = vis(x, grid_thw=g.repeat(len(idx), 1))
    tok = out.pooler_output
    return head(tok), dense[idx].reshape(-1, dense.shape[-1])


def evaluate():
    vis.eval()
    idx = torch.arange(a.scenes, a.scenes + 300)
    with torch.no_grad():
        logits, t = fwd(idx)
    vis.train()
    sh = t[:, nC:]
    one = sh.sum(1) == 1
    sacc = (logits[one, nC:].argmax(1) == sh[one].argmax(1)).float().mean().item()
    co = t[:, :nC]
    onec = co.sum(1) == 1
    cacc = (logits[onec, :nC].argmax(1) == co[onec].argmax(1)).float().mean().item()
    pred = (logits[:, nC:] > 0).float()
    tp = (pred * sh).sum()
    f1 = (2 * tp / (pred.sum() + sh.sum())).item()
    return sacc, cacc, f1


t0 = time.time()
for step in range(1, a.steps + 1):
    lr = a.lr * min(1, step / 50) * 0.5 * (1 + np.cos(np.pi * step / a.steps))
    for gr in opt.param_groups:
        gr["lr"] = lr
    idx = torch.randint(0, a.scenes, (a.batch,))
    logits, t = fwd(idx)
    if a.loss == "bce":
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, t)
    else:  # softmax CE over colour+none and shape+none on every token
        ce = lambda lg, tt: torch.nn.functional.cross_entropy(
            torch.cat([lg, torch.zeros(len(lg), 1)], 1),
            torch.where(tt.sum(1) > 0, tt.argmax(1), tt.shape[1]),
        )
        loss = ce(logits[:, :nC], t[:, :nC]) + ce(logits[:, nC:], t[:, nC:])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 200 == 0 or step == a.steps:
        s, c, f = evaluate()
        print(
            f"step {step} loss {loss.item():.3f} shape_acc {s:.3f} colour_acc {c:.3f} shape_f1 {f:.3f} t {time.time() - t0:.0f}s",
            flush=True,
        )
