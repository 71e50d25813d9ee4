"""Fast probe of the tiny Defender's learning recipe: a plain PyTorch loop, not the pipeline path.

Same model, tokenizer, prompts, dense grounding and answer protocol as the pipeline, but images
are pre-processed once and the loop is bare, so recipes can be compared in minutes. It prints a
loss line every 100 steps and greedy accuracy per family every `--eval_every` steps.
Example: `.venv/bin/python benchmarks/probe_defender_learning.py --scenes 3000 --steps 2500
--layers 4 --short 1 --batch 32 --lr 1e-3 --threads 2`.
`--match 1` adds question grounding (what the pipeline's `grounding_weight` does; results in
benchmarks/results/defender_grounding.md); `--relation` and `--pos` are the spatial tries there.
`--rope_theta` sets the LM's rotary base (benchmarks/results/defender_rope.md).
`--schedule wsd` keeps the learning rate flat until the last `--decay` share of the steps.
Note: `mm_token_type_ids` must be passed in training, or Qwen2.5-VL trains with 1D positions and
generates with 3D mrope positions (an early version of this probe made that mistake).
"""

import argparse
import json
import logging
import math
import time

import numpy as np
import torch

from aot.defender import Defender, TinyDefenderConfig, build_tiny_defender
from aot.defender.dense import DENSE_LABELS, VisionTap, dense_grounding_loss, dense_targets
from aot.rewards import build_prompt, correct_first_reward, target_completion
from aot.world import (
    QuestionConfig,
    WorldConfig,
    category_frequencies,
    make_questions,
    sample_scene,
)
from aot.world.questions import resolve, target_boxes

p = argparse.ArgumentParser()
p.add_argument("--scenes", type=int, default=3000)
p.add_argument("--steps", type=int, default=1500)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--dense", type=float, default=1.0)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--hidden", type=int, default=128)
p.add_argument("--vdepth", type=int, default=2)
p.add_argument("--vhidden", type=int, default=64)
p.add_argument("--size", type=int, default=112)
p.add_argument("--families", default="spatial,attribute,count,existence")
p.add_argument("--mode", default="word")
p.add_argument("--bg", default="plain:0.5,textured:0.3,photo:0.2")
p.add_argument("--maxobj", type=int, default=5)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--eval_every", type=int, default=500)
p.add_argument("--tag", default="run")
p.add_argument("--aligned", type=int, default=1)
p.add_argument("--turns", type=int, default=1)
p.add_argument("--textfirst", type=int, default=1)
p.add_argument("--short", type=int, default=0)
p.add_argument("--grid", type=int, default=28)
p.add_argument("--dense_loss", default="softmax", help="aot.defender.dense.DENSE_LOSSES")
p.add_argument("--init", default=None, help="start from this Defender folder (same world)")
p.add_argument("--pos", type=float, default=0.0, help="weight of the image-token position loss")
p.add_argument(
    "--pos_layer", type=int, default=1, help="LM layer whose image tokens name their row/col"
)
p.add_argument(
    "--balance",
    type=int,
    default=0,
    help="1: draw each family's answers uniformly (over answers with >= 1%% of its questions), "
    "so the question alone predicts nothing (count is 67%% '1' in this world)",
)
p.add_argument(
    "--match",
    type=float,
    default=0.0,
    help="weight of the question-conditioned match loss: after LM layer --match_layer each image "
    "token must say whether it holds an object the question is about (spatial: a or b)",
)
p.add_argument("--match_layer", type=int, default=2)
p.add_argument(
    "--relation",
    type=float,
    default=0.0,
    help="weight of the relation loss: for spatial questions, a's image token must name the "
    "relation (left/right/above/below) after LM layer --relation_layer",
)
p.add_argument("--relation_layer", type=int, default=3)
p.add_argument(
    "--direction",
    type=float,
    default=0.0,
    help="weight of the direction loss: for spatial questions, every image token must name where "
    "it lies relative to b's token (left/right/above/below; a's token: the answer) after LM layer "
    "--direction_layer",
)
p.add_argument("--direction_layer", type=int, default=3)
p.add_argument(
    "--rope_theta",
    type=float,
    default=1e4,
    help="the LM's rotary base (defender.tiny.rope_theta); mrope gives width its lowest frequencies",
)
p.add_argument(
    "--mrope",
    default="sections",
    help="defender.tiny.mrope_layout: sections (Qwen2.5-VL) or interleaved (width gets fast ones)",
)
p.add_argument(
    "--family_weights",
    default=None,
    help="draw families with these weights, e.g. spatial:2,attribute:1,count:1,existence:1 "
    "(default: uniform)",
)
p.add_argument(
    "--schedule",
    default="cosine",
    choices=("cosine", "wsd"),
    help="learning rate after the 100-step warm-up: cosine over the run, or wsd (flat, then a "
    "cosine decay over the last --decay share of the steps)",
)
p.add_argument("--decay", type=float, default=0.2, help="wsd: share of the steps that decay")
p.add_argument("--device", default="cpu", help="cpu or cuda (the loop and heads move there)")
p.add_argument("--save", default=None, help="save the trained Defender to this folder")
p.add_argument(
    "--seed", type=int, default=0, help="the model's initialisation and the training draws"
)
a = p.parse_args()
if a.balance and a.turns > 1:
    p.error("--balance draws one question at a time: use it with --turns 1")
torch.set_num_threads(a.threads)
logging.basicConfig(level=logging.WARNING)
fams = a.families.split(",")
bg = {k: float(v) for k, v in (x.split(":") for x in a.bg.split(","))}
world = dict(image_size=a.size, max_objects=a.maxobj, backgrounds=bg, grid=a.grid)
wcfg = WorldConfig.from_dict(world)
qcfg = QuestionConfig.for_world(wcfg, families=tuple(fams))
rng = np.random.default_rng(0)
t0 = time.time()
scenes = [sample_scene(rng, wcfg, f"s{i}") for i in range(a.scenes + 300)]
pop = category_frequencies(scenes)
recs = []
for s in scenes:
    for r in make_questions(s, rng, qcfg, popular_categories=pop):
        r["scene"] = s
        recs.append(r)
print("data", len(recs), time.time() - t0, flush=True)
train = [r for r in recs if int(r["scene_id"][1:]) < a.scenes]
test = [r for r in recs if int(r["scene_id"][1:]) >= a.scenes]
cfg = TinyDefenderConfig(
    hidden_size=a.hidden,
    intermediate_size=2 * a.hidden,
    num_layers=a.layers,
    vision_hidden_size=a.vhidden,
    vision_depth=a.vdepth,
    vocab_size=1024,
    rope_theta=a.rope_theta,
    mrope_layout=a.mrope,
)
if a.init:
    d = Defender.from_pretrained(a.init)
else:
    # imported here so that an --init run needs no Kedro/TRL (e.g. on a bare GPU machine)
    from aot.pipelines.bootstrap_dataset.defender_nodes import defender_corpus

    d = build_tiny_defender(cfg, defender_corpus(world), seed=a.seed)
dev = torch.device(a.device)
d.model.to(dev)
model, proc = d.model, d.processor
tok = proc.tokenizer
print("params", d.num_parameters(), flush=True)


def make_prompt(r):
    if a.short:
        o = list(r["options"])
        return r["question"] + ("\nOptions: " + ", ".join(o) if o else "")
    return build_prompt(r["question"], list(r["options"]), mode=a.mode)


def encode(r):
    prompt = make_prompt(r)
    ans = target_completion(r["answer"], r["answer_text"], list(r["options"]), a.mode)
    uc = (
        [{"type": "text", "text": prompt}, {"type": "image"}]
        if a.textfirst
        else [{"type": "image"}, {"type": "text", "text": prompt}]
    )
    msgs = [
        {"role": "user", "content": uc},
        {"role": "assistant", "content": [{"type": "text", "text": ans}]},
    ]
    return proc.apply_chat_template(msgs, tokenize=False)


# images: process unique scenes once
t0 = time.time()
scene_ids = sorted({r["scene_id"] for r in train}, key=lambda x: int(x[1:]))
by_id = {s.scene_id: s for s in scenes}
imgs = [by_id[i].render() for i in scene_ids]
pix = proc.image_processor(images=imgs, return_tensors="pt")
npatch = int(pix["image_grid_thw"][0].prod())
pv = pix["pixel_values"].view(len(imgs), npatch, -1)
grid = pix["image_grid_thw"][0]
sidx = {sid: k for k, sid in enumerate(scene_ids)}
dense = torch.tensor(np.stack([dense_targets(by_id[i]) for i in scene_ids]))


# text
def encode_multi(rs):
    msgs = []
    for j, r in enumerate(rs):
        content = [{"type": "text", "text": make_prompt(r)}] + (
            [{"type": "image"}] if j == 0 else []
        )
        msgs.append({"role": "user", "content": content})
        msgs.append(
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "text",
                        "text": target_completion(
                            r["answer"], r["answer_text"], list(r["options"]), a.mode
                        ),
                    }
                ],
            }
        )
    return proc.apply_chat_template(msgs, tokenize=False)


if a.turns > 1:
    grng = np.random.default_rng(1)
    by_scene = {}
    for r in train:
        by_scene.setdefault(r["scene_id"], []).append(r)
    groups = []
    for sid, rs in by_scene.items():
        for rep in range(3):
            fam_pick = {}
            for r in grng.permutation(len(rs)):
                fam_pick.setdefault(rs[r]["family"], rs[r])
            chosen = list(fam_pick.values())
            grng.shuffle(chosen)
            groups.append(chosen[: a.turns])
    train = [g[0] for g in groups]
    texts = [encode_multi(g) for g in groups]
else:
    texts = [encode(r) for r in train]
enc = proc(text=texts, images=None) if False else None
n_img_tok = npatch // 4
ids_list, lab_list = [], []
img_tok = model.config.image_token_id
start_ids = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
for t in texts:
    t2 = t.replace("<|image_pad|>", "<|image_pad|>" * n_img_tok)
    ids = tok(t2, add_special_tokens=False)["input_ids"]
    # label = tokens after last "<|im_start|>assistant\n"
    lab = [-100] * len(ids)
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    k = 0
    while k < len(ids):
        if ids[k : k + len(start_ids)] == start_ids:
            k += len(start_ids)
            while k < len(ids) and ids[k] != end_id:
                lab[k] = ids[k]
                k += 1
            if k < len(ids):
                lab[k] = ids[k]
        k += 1
    ids_list.append(ids)
    lab_list.append(lab)
print("prep", time.time() - t0, "len", np.mean([len(i) for i in ids_list]), flush=True)
print(tok.decode([i for i in lab_list[0] if i != -100]))

head = torch.nn.Linear(a.hidden, len(DENSE_LABELS))  # --aligned 0: a separate linear probe


def word_ids(w):
    out = []
    for v in (w, " " + w):
        t = tok(v, add_special_tokens=False)["input_ids"]
        if len(t) == 1:
            out.append(t[0])
    return out


label_ids = [word_ids(l.split(":")[1]) for l in DENSE_LABELS]
print("label ids", label_ids)
# expand dense targets to columns over all ids
cols = [i for ids in label_ids for i in ids]
expand = torch.tensor([k for k, ids in enumerate(label_ids) for _ in ids]).to(dev)


def aligned_loss(tokens, targets):
    return dense_grounding_loss(model.lm_head(tokens)[:, cols], targets, expand, a.dense_loss)


tap = VisionTap(model)
# Position probe: a linear head (dropped afterwards) reads each image token's row and column
# from the LM's hidden state after layer `--pos_layer`: RoPE alone puts no absolute position
# into the vision features, so spatial questions need the LM to write it there.
side = a.size // 28
pos_head = torch.nn.Linear(a.hidden, 2 * side)
lm_hidden = {}
model.model.language_model.layers[a.pos_layer - 1].register_forward_hook(
    lambda m, args, out: lm_hidden.__setitem__("h", out[0] if isinstance(out, tuple) else out)
)
cell = torch.arange(side * side)
pos_rows, pos_cols = (cell // side).to(dev), (cell % side).to(dev)


def position_loss(ids):
    h = lm_hidden["h"][ids == img_tok].view(-1, side * side, a.hidden)
    logit = pos_head(h)
    rows = torch.nn.functional.cross_entropy(
        logit[..., :side].reshape(-1, side), pos_rows.repeat(len(h))
    )
    cols = torch.nn.functional.cross_entropy(
        logit[..., side:].reshape(-1, side), pos_cols.repeat(len(h))
    )
    return rows + cols


# Match probe: a linear head (dropped afterwards) reads, from each image token's LM hidden state
# after layer `--match_layer`, whether that token holds an object the question is about
# (0 none, 1 target / a, 2 b). Text comes before the image, so image tokens can see the question.
match_head = torch.nn.Linear(a.hidden, 3)
match_hidden = {}
model.model.language_model.layers[a.match_layer - 1].register_forward_hook(
    lambda m, args, out: match_hidden.__setitem__("h", out[0] if isinstance(out, tuple) else out)
)


def match_targets(r) -> torch.Tensor:
    spec = json.loads(r["spec"]) if isinstance(r["spec"], str) else r["spec"]
    scene = r["scene"]
    target = torch.zeros(side * side, dtype=torch.long)
    groups = (
        [[resolve(scene, spec["a"]).box], [resolve(scene, spec["b"]).box]]
        if spec["family"] == "spatial"
        else [target_boxes(scene, spec)]
    )
    for label, boxes in enumerate(groups, start=1):
        for box in boxes:
            row = ((box[1] + box[3]) // 2) // 28
            col = ((box[0] + box[2]) // 2) // 28
            target[row * side + col] = label
    return target


relation_head = torch.nn.Linear(a.hidden, 4)
relation_hidden = {}
model.model.language_model.layers[a.relation_layer - 1].register_forward_hook(
    lambda m, args, out: relation_hidden.__setitem__("h", out[0] if isinstance(out, tuple) else out)
)
REL = ("left", "right", "above", "below")


def relation_targets(r) -> torch.Tensor:
    """-100 everywhere but, for a spatial question, a's token, labelled with the answer."""
    target = torch.full((side * side,), -100, dtype=torch.long)
    if r["family"] == "spatial":
        target[match_targets(r) == 1] = REL.index(r["answer_text"])
    return target


def relation_word_loss(ids, targets, hidden, head):
    """Cross-entropy of `head` over REL at each image token's `hidden` state (-100: ignored)."""
    h = hidden["h"][ids == img_tok].view(-1, side * side, a.hidden)
    t = targets.reshape(-1)
    if (t >= 0).sum() == 0:
        return torch.zeros(())
    return torch.nn.functional.cross_entropy(head(h).reshape(-1, len(REL)), t)


direction_head = torch.nn.Linear(a.hidden, 4)
direction_hidden = {}
model.model.language_model.layers[a.direction_layer - 1].register_forward_hook(
    lambda m, args, out: direction_hidden.__setitem__(
        "h", out[0] if isinstance(out, tuple) else out
    )
)


def direction_targets(r) -> torch.Tensor:
    """-100 but for spatial questions: each token's direction from b's token (ties: -100)."""
    target = torch.full((side * side,), -100, dtype=torch.long)
    if r["family"] != "spatial":
        return target
    where = match_targets(r)
    b_cells = (where == 2).nonzero().flatten().tolist()
    if not b_cells:
        return target
    rb, cb = divmod(b_cells[0], side)
    for k in range(side * side):
        dr, dc = k // side - rb, k % side - cb
        if abs(dc) > abs(dr):
            target[k] = REL.index("left" if dc < 0 else "right")
        elif abs(dr) > abs(dc):
            target[k] = REL.index("above" if dr < 0 else "below")
    target[where == 1] = REL.index(r["answer_text"])
    return target


def match_loss(ids, targets):
    h = match_hidden["h"][ids == img_tok].view(-1, side * side, a.hidden)
    return torch.nn.functional.cross_entropy(match_head(h).reshape(-1, 3), targets.reshape(-1))


for extra in (head, pos_head, match_head, relation_head, direction_head):
    extra.to(dev)
params = (
    list(model.parameters())
    + list(head.parameters())
    + list(pos_head.parameters())
    + list(match_head.parameters())
    + list(relation_head.parameters())
    + list(direction_head.parameters())
)
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
warm = 100


def lr_factor(s: int) -> float:
    """Linear warm-up times a cosine over the run, or (wsd) over the last `--decay` share only
    (the shape of transformers' `warmup_stable_decay`, which the pipeline uses; kept by hand so
    that the probe's recorded runs stay comparable)."""
    if a.schedule == "cosine":
        angle = math.pi * min(s, a.steps) / a.steps
    else:
        decay = max(1, round(a.decay * a.steps))
        angle = math.pi * min(max(0, s - (a.steps - decay)), decay) / decay
    return min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(angle))


sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
g = torch.Generator().manual_seed(a.seed)
# balanced by family
fam_idx = {f: [i for i, r in enumerate(train) if r["family"] == f] for f in fams}
if a.turns > 1:
    fam_idx = {f: list(range(len(train))) for f in fams}
pad = tok.pad_token_id


# --balance 1: family -> answer -> question indices
ans_idx = {}
for f, idx in fam_idx.items():
    groups = {}
    for i in idx:
        groups.setdefault(train[i]["answer_text"], []).append(i)
    ans_idx[f] = [g for g in groups.values() if len(g) >= 0.01 * len(idx)]
match_y = [match_targets(r) for r in train] if a.match else None
relation_y = [relation_targets(r) for r in train] if a.relation else None
direction_y = [direction_targets(r) for r in train] if a.direction else None
if a.balance:
    print("balanced answers:", {f: len(v) for f, v in ans_idx.items()}, flush=True)


def draw(f: str) -> int:
    """One training question of family ``f`` (of a uniformly drawn answer with --balance 1)."""
    pool = fam_idx[f]
    if a.balance:
        answers = ans_idx[f]
        pool = answers[torch.randint(len(answers), (1,), generator=g).item()]
    return pool[torch.randint(len(pool), (1,), generator=g).item()]


def batch(ix):
    L = max(len(ids_list[i]) for i in ix)
    ids = torch.full((len(ix), L), pad)
    lab = torch.full((len(ix), L), -100)
    am = torch.zeros((len(ix), L), dtype=torch.long)
    for j, i in enumerate(ix):
        n = len(ids_list[i])
        ids[j, :n] = torch.tensor(ids_list[i])
        lab[j, :n] = torch.tensor(lab_list[i])
        am[j, :n] = 1
    s = [sidx[train[i]["scene_id"]] for i in ix]
    return (
        ids.to(dev),
        lab.to(dev),
        am.to(dev),
        pv[s].reshape(-1, pv.shape[-1]).to(dev),
        grid.repeat(len(ix), 1).to(dev),
        dense[s].reshape(-1, dense.shape[-1]).to(dev),
    )


def evaluate(n=400):
    model.eval()
    out = {}
    for f in fams:
        rs = [r for r in test if r["family"] == f][:n]
        prompts = [make_prompt(r) for r in rs]
        ans = d.generate(
            [r["scene"].render() for r in rs], prompts, max_new_tokens=8, batch_size=64
        )
        print("  ", f, [(x[0], r["answer_text"]) for x, r in zip(ans[:4], rs[:4])], flush=True)
        right = [
            correct_first_reward(
                x[0], r["answer"], list(r["options"]), mode=a.mode, answer_text=r["answer_text"]
            ).accuracy
            > 0
            for x, r in zip(ans, rs)
        ]
        out[f] = float(np.mean(right))
        # balanced accuracy: the mean over answers of each answer's accuracy (prior-free)
        by_answer = {}
        for ok, r in zip(right, rs):
            by_answer.setdefault(r["answer_text"], []).append(ok)
        out[f"{f}_bal"] = float(np.mean([np.mean(v) for v in by_answer.values() if len(v) >= 5]))
    model.train()
    return out


fam_w = None  # --family_weights: draw families by weight instead of uniformly
if a.family_weights:
    given = {k: float(v) for k, v in (x.split(":") for x in a.family_weights.split(","))}
    fam_w = torch.tensor([given.get(f, 1.0) for f in fams])
model.train()
t0 = time.time()
hist = []
for step in range(1, a.steps + 1):
    fsel = (
        torch.multinomial(fam_w, a.batch, replacement=True, generator=g).tolist()
        if fam_w is not None
        else torch.randint(len(fams), (a.batch,), generator=g).tolist()
    )
    ix = [draw(fams[f]) for f in fsel]
    ids, lab, am, pvb, gb, db = batch(ix)
    mm = (ids == img_tok).long()
    out = model(
        input_ids=ids,
        attention_mask=am,
        pixel_values=pvb,
        image_grid_thw=gb,
        labels=lab,
        mm_token_type_ids=mm,
    )
    dl = (
        aligned_loss(tap.tokens, db)
        if a.aligned
        else torch.nn.functional.binary_cross_entropy_with_logits(head(tap.tokens), db)
    )
    pl = position_loss(ids) if a.pos else torch.zeros(())
    ml = (
        match_loss(ids, torch.stack([match_y[i] for i in ix]).to(dev))
        if a.match
        else torch.zeros(())
    )
    rl = (
        relation_word_loss(
            ids, torch.stack([relation_y[i] for i in ix]).to(dev), relation_hidden, relation_head
        )
        if a.relation
        else torch.zeros(())
    )
    xl = (
        relation_word_loss(
            ids, torch.stack([direction_y[i] for i in ix]).to(dev), direction_hidden, direction_head
        )
        if a.direction
        else torch.zeros(())
    )
    loss = out.loss + a.dense * dl + a.pos * pl + a.match * ml + a.relation * rl + a.direction * xl
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad()
    hist.append((out.loss.item(), dl.item(), pl.item(), ml.item(), rl.item(), xl.item()))
    if step % 100 == 0:
        h = np.mean(hist[-100:], axis=0)
        print(
            f"step {step} lm {h[0]:.3f} dense {h[1]:.3f} pos {h[2]:.3f} match {h[3]:.3f} rel {h[4]:.3f} dir {h[5]:.3f} t {time.time() - t0:.0f}s",
            flush=True,
        )
    if step % a.eval_every == 0 or step == a.steps:
        te = time.time()
        ev = evaluate()
        print(
            "EVAL",
            step,
            {k: round(v, 3) for k, v in ev.items()},
            f"({time.time() - te:.0f}s)",
            flush=True,
        )
if a.save:
    d.save_pretrained(a.save)
    print("saved", a.save, flush=True)
