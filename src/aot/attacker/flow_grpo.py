"""Flow-GRPO for the Attacker: edit plans and box edits trained on the integrity x efficacy reward.

One RL step (aot-method.md §3; the loop of ``shared/notes/exp-attacker-editor.md`` §4):

1. draw ``prompts_per_step`` (scene, question) items; for each, sample ``group_size`` edit plans
   from the planner (``aot.attacker.planner``: kind, region / object, class, with log-probs);
2. run the box editor with the Flow-GRPO SDE (``aot.attacker.flow_sampler``), recording every
   stochastic step's log-prob over the box pixels. A replace is a remove pass followed by an add
   pass in the same box (the cold-started editor knows both), so it records two passes;
3. score each edit (``aot.rewards.attack``): SSIM integrity gate on the target boxes, the
   ground-truth guard, edit validity, and the frozen Defender's K answers (efficacy);
4. group-normalise the rewards into advantages and take PPO-clipped steps on the recorded
   per-step log-prob ratios (optionally a random subset of steps) of the UNet, plus a clipped
   policy-gradient step of the planner, with an optional KL to the cold-start model's means.

The editor is the tiny default ``BoxEditPipeline`` (a UNet on crops around the box) or, at
paper scale, ``QwenImageEditPipeline`` (``aot.attacker.qwen_edit``: the transformer on packed
latents, one instruction pass per plan, the edit held to the box). ``lora`` trains peft LoRA
adapters on the editor instead of all its weights. Under ``accelerate launch`` (an
``accelerate.Accelerator`` passed in; ``aot.distributed``) every process samples its own items
and gradients are averaged over processes before each step (``FlowGRPOTrainer``).

``train_attacker_flow_grpo`` is the node-friendly entry point; ``FlowGRPOTrainer`` exposes the
pieces (rollout, reward, update) for benchmarks and tests.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from aot.attacker.cold_start import torch_threads
from aot.attacker.crops import paste_back, to_crops
from aot.attacker.flow_sampler import (
    CropConditioning,
    FlowEditor,
    QwenImageEditEditor,
    UNetCropEditor,
    sample_flow_sde,
    step_log_prob,
)
from aot.attacker.pipeline import BoxEditPipeline
from aot.attacker.planner import EditPlan, EditPlanner, PlannerConfig, PlanSpace, plan_space
from aot.attacker.prompts import REMOVE_CLASS
from aot.attacker.quality import edit_quality
from aot.attacker.qwen_edit import is_qwen_image_edit, run_qwen_edit_pass
from aot.attacker.sde import SampleTrace, mean_kl
from aot.bootstrap.pairs import Answerer  # the Defender interface the filter uses too
from aot.config import reject_unknown
from aot.rewards.answer import build_prompt, target_completion
from aot.rewards.attack import (
    AttackRewardConfig,
    composite_reward,
    correct_rate,
    edit_validity,
    efficacy_reward,
    ground_truth_guard,
    imperceptibility,
    integrity_gate,
    judge_crop,
    judge_question,
    judged_validity,
    outside_similarity,
)
from aot.world import Edit, Scene, apply_edit

logger = logging.getLogger(__name__)

ADV_STD_MODES = ("group", "global", "none")


@dataclass(frozen=True)
class FlowGRPOConfig:
    """Kedro ``attacker.flow_grpo.*``; ``reward`` and ``planner`` are nested dicts.

    Defaults follow the measured toy loop (notes §4: 10 SDE steps at noise 0.7, clip 1e-3,
    lr 1e-4, 2 minibatches, adv clip 5) with a small KL (β 0.05 kept quality there).
    """

    steps: int = 30
    prompts_per_step: int = 4
    group_size: int = 8
    sampling_steps: int = 10
    noise_level: float = 0.7
    train_step_fraction: float = 1.0
    minibatches: int = 2
    inner_epochs: int = 1
    lr: float = 1e-4
    planner_lr: float = 3e-3
    weight_decay: float = 0.0
    clip_range: float = 1e-3
    planner_clip_range: float = 0.2
    adv_clip: float = 5.0
    adv_std: str = "group"
    beta_kl: float = 0.05
    log_kl: bool = True
    grad_clip: float = 1.0
    train_unet: bool = True
    train_planner: bool = True
    planner_entropy: float = 0.01
    filter_clean: bool = True
    max_records: int | None = None
    quality_every: int = 10
    quality_edits: int = 32
    defender_batch_size: int = 32
    threads: int = 1
    save_every: int = 0  # steps between resumable checkpoints in `checkpoint_dir` (0: never)
    # peft LoraConfig arguments: train low-rank adapters on the editor (the UNet, or
    # Qwen-Image-Edit's transformer) instead of all its weights; the KL reference is then the
    # editor with the adapters switched off (no copy), and the trained adapters are merged back.
    # None: full fine-tuning. See ``aot.attacker.qwen_edit.QWEN_IMAGE_LORA_TARGETS``.
    lora: dict[str, Any] | None = None
    # Recompute the editor's activations in the backward pass (diffusers' gradient
    # checkpointing): less memory for a large editor, for a second forward pass per update.
    gradient_checkpointing: bool = False
    reward: AttackRewardConfig = field(default_factory=AttackRewardConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; the ValueError names the field."""
        owner = "FlowGRPOConfig"

        def number(name: str, low: float, high: float, integer: bool = False, open_low=False):
            v = getattr(self, name)
            kind = int if integer else int | float
            ok = not isinstance(v, bool) and isinstance(v, kind) and low <= v <= high
            if not ok or (open_low and v == low):
                bound = f"> {low}" if open_low else f"in [{low}, {high}]"
                what = "an integer" if integer else "a number"
                raise ValueError(f"{owner}.{name} must be {what} {bound}, got {v!r}")

        for name in ("steps", "prompts_per_step", "minibatches", "inner_epochs", "threads"):
            number(name, 1, math.inf, integer=True)
        number("group_size", 2, math.inf, integer=True)
        number("sampling_steps", 2, math.inf, integer=True)
        number("quality_every", 0, math.inf, integer=True)
        number("save_every", 0, math.inf, integer=True)
        number("quality_edits", 1, math.inf, integer=True)
        number("defender_batch_size", 1, math.inf, integer=True)
        number("noise_level", 0, math.inf, open_low=True)
        number("train_step_fraction", 0, 1, open_low=True)
        for name in ("lr", "planner_lr", "clip_range", "planner_clip_range", "adv_clip"):
            number(name, 0, math.inf, open_low=True)
        number("grad_clip", 0, math.inf, open_low=True)
        for name in ("beta_kl", "planner_entropy", "weight_decay"):
            number(name, 0, math.inf)
        for name in (
            "log_kl",
            "train_unet",
            "train_planner",
            "filter_clean",
            "gradient_checkpointing",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{owner}.{name} must be a bool, got {getattr(self, name)!r}")
        if self.max_records is not None:
            number("max_records", 1, math.inf, integer=True)
        if self.adv_std not in ADV_STD_MODES:
            raise ValueError(
                f"{owner}.adv_std must be one of {ADV_STD_MODES}, got {self.adv_std!r}"
            )
        if self.lora is not None:
            if not isinstance(self.lora, Mapping) or not self.lora.get("target_modules"):
                raise ValueError(
                    f"{owner}.lora must be null or a mapping of peft LoraConfig arguments with "
                    f"target_modules, got {self.lora!r}"
                )
            rank = self.lora.get("r", 8)
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise ValueError(f"{owner}.lora.r must be a positive integer, got {rank!r}")
        if not isinstance(self.reward, AttackRewardConfig):
            raise ValueError(f"{owner}.reward must be an AttackRewardConfig")
        if not isinstance(self.planner, PlannerConfig):
            raise ValueError(f"{owner}.planner must be a PlannerConfig")

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> FlowGRPOConfig:
        """From Kedro params; unknown keys (also inside ``reward`` / ``planner``) fail by name."""
        params = dict(params or {})
        reject_unknown("FlowGRPOConfig", cls, params)
        if isinstance(params.get("reward"), Mapping):
            params["reward"] = AttackRewardConfig.from_dict(params["reward"])
        if isinstance(params.get("planner"), Mapping):
            params["planner"] = PlannerConfig.from_dict(params["planner"])
        if isinstance(params.get("lora"), Mapping):
            params["lora"] = dict(params["lora"])
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------- data


@dataclass
class AttackItem:
    """One (scene, question): the record row, its clean image, graph and plan space, and the
    frozen Defender's answers on the clean image."""

    row: dict[str, Any]
    image: np.ndarray
    scene: Scene | None
    space: PlanSpace
    clean_answers: list[str] | None = None

    @property
    def prompt_key(self) -> str:
        return str(self.row.get("record_id", self.row["question"]))


def _load_image(images: Mapping[str, Any], key: str) -> np.ndarray:
    if key not in images:
        raise KeyError(f"image {key!r} is referenced by a record but missing from the images")
    value = images[key]
    value = value() if callable(value) else value
    return np.asarray(value.convert("RGB")) if isinstance(value, Image.Image) else np.asarray(value)


def _scene_of(row: Mapping[str, Any], scenes: Mapping[str, Scene] | None) -> Scene | None:
    graph = row.get("graph")
    if isinstance(graph, str) and graph:
        return Scene.from_dict(json.loads(graph))
    if isinstance(graph, Mapping):
        return Scene.from_dict(dict(graph))
    if isinstance(graph, Scene):
        return graph
    if scenes is not None:
        key = row.get("scene_id")
        return scenes.get(key) if key is not None else None
    return None


def build_items(
    records: pd.DataFrame,
    images: Mapping[str, Any],
    planner_config: PlannerConfig,
    scenes: Mapping[str, Scene] | pd.DataFrame | None = None,
    max_records: int | None = None,
) -> list[AttackItem]:
    """Items for the records that have at least one valid edit. The scene graph comes from a
    ``graph`` column (JSON of ``Scene.to_dict``), else from ``scenes`` (a scene table with
    ``scene_id`` / ``graph`` columns, or a dict) by ``scene_id``; without one only add edits
    off the target boxes are offered and the guard cannot re-derive the answer."""
    missing = [
        c for c in ("question", "answer", "family", "target_boxes", "image") if c not in records
    ]
    if missing:
        raise ValueError(f"train_attacker_flow_grpo: records lack column(s) {missing}")
    rows = records.to_dict("records")
    if max_records is not None:
        rows = rows[:max_records]
    if isinstance(scenes, pd.DataFrame):
        # only the scenes these rows show: the table holds every scene of the split
        wanted = {row.get("scene_id") for row in rows}
        scenes = {
            sid: Scene.from_dict(json.loads(g))
            for sid, g in zip(scenes["scene_id"], scenes["graph"], strict=True)
            if sid in wanted
        }
    items = []
    for row in rows:
        row["options"] = list(row["options"]) if row.get("options") is not None else []
        row["target_boxes"] = [[int(v) for v in b] for b in row["target_boxes"]]
        image = _load_image(images, row["image"])
        scene = _scene_of(row, scenes)
        space = plan_space(image, row, scene, planner_config)
        if space.any_valid:
            items.append(AttackItem(row, image, scene, space))
    return items


# ------------------------------------------------------------------------------------- rollout


@dataclass
class EditPass:
    """One editor pass over a subset ``idx`` of the rollout's samples."""

    idx: torch.Tensor
    cond: CropConditioning
    trace: SampleTrace


@dataclass
class Rollout:
    """A batch of sampled edits: groups of ``group_size`` plans per item, the editor passes
    that drew them and the resulting images (HWC uint8)."""

    items: list[AttackItem]
    groups: np.ndarray
    plans: list[EditPlan]
    actions: torch.Tensor
    plan_log_probs: torch.Tensor
    passes: list[EditPass]
    edited: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.plans)


RewardFn = Callable[[Rollout], dict[str, np.ndarray]]


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1)


def run_edit_pass(
    editor: UNetCropEditor,
    pipe: BoxEditPipeline,
    images: list[torch.Tensor],
    boxes: list[tuple[int, int, int, int]],
    class_ids: list[int],
    config: FlowGRPOConfig,
    generator: torch.Generator,
    reference: UNetCropEditor | None,
) -> tuple[list[torch.Tensor], CropConditioning, SampleTrace]:
    """Edited uint8 images (3,H,W), the conditioning and the SDE trace of one batched pass."""
    src, mask, windows = to_crops(images, boxes, pipe.config.crop_size, pipe.config.crop_scale)
    cond = CropConditioning(src, mask, torch.tensor(class_ids, dtype=torch.long))
    crops, trace = sample_flow_sde(
        editor,
        pipe.scheduler,
        cond,
        src.shape,
        config.sampling_steps,
        config.noise_level,
        generator,
        mask=mask,
        known=src,
        reference=reference,
        device=pipe.unet.device,
    )
    return list(paste_back(images, crops.cpu(), windows, boxes)), cond, trace


# -------------------------------------------------------------------------------------- reward


def defender_answers(
    defender: Answerer,
    images: Sequence[np.ndarray],
    rows: Sequence[Mapping[str, Any]],
    config: AttackRewardConfig,
    batch_size: int,
    seed: int | None,
) -> list[list[str]]:
    """The Defender's K answers per (image, record) at the reward's temperature."""
    if not rows:
        return []
    prompts = [build_prompt(r["question"], list(r["options"]), config.answer_mode) for r in rows]
    pil = [Image.fromarray(np.asarray(im, dtype=np.uint8), "RGB") for im in images]
    return defender.generate(
        pil,
        prompts,
        n=config.k,
        temperature=config.temperature,
        max_new_tokens=config.max_new_tokens,
        batch_size=batch_size,
        seed=seed,
    )


class DefenderAttackReward:
    """The default reward: integrity gate x ground-truth guard x validity x Defender efficacy
    (``aot.rewards.attack``). The Defender is queried only for edits that pass the gate, the
    guard and the clean-correct condition (the others score 0 whatever it answers)."""

    def __init__(
        self, defender: Answerer, config: AttackRewardConfig, batch_size: int = 32
    ) -> None:
        self.defender = defender
        self.config = config
        self.batch_size = batch_size
        self.seed = 0
        self._background: dict[tuple[str, int], np.ndarray] = {}

    def background(self, item: AttackItem, object_id: int) -> np.ndarray | None:
        """The clean image with one object removed (what lies behind it), from the graph."""
        if item.scene is None:
            return None
        key = (item.scene.scene_id + "|" + item.prompt_key, object_id)
        if key not in self._background:
            obj = item.scene.get_object(object_id)
            self._background[key] = np.asarray(
                apply_edit(item.scene, Edit("remove", obj.box)).render()
            )
        return self._background[key]

    def parts(self, item: AttackItem, plan: EditPlan, edited: np.ndarray) -> dict[str, float]:
        """Every reward part except efficacy for one edit."""
        cfg = self.config
        targets = item.space.target_boxes
        out: dict[str, float] = {}
        out.update(integrity_gate(item.image, edited, targets, cfg.ssim_threshold, cfg.ssim_margin))
        guard = ground_truth_guard(
            plan.kind,
            plan.box,
            targets,
            shape=plan.shape,
            colour=plan.colour,
            spec=item.row.get("spec"),
            scene=item.scene if cfg.exact_guard else None,
            margin=cfg.target_margin,
        )
        out.update({k: v for k, v in guard.items() if k != "gt_reason"})
        reference = item.image if plan.kind == "add" else self.background(item, int(plan.object_id))
        if reference is None:
            out.update({"valid": 1.0, "colour_ok": math.nan, "shape_ok": math.nan})
        else:
            out.update(
                edit_validity(
                    edited,
                    reference,
                    plan.box,
                    plan.kind,
                    plan.shape,
                    plan.colour,
                    checks=cfg.validity_checks,
                    remove_tol=cfg.remove_tol,
                )
            )
        out.update(outside_similarity(item.image, edited, [plan.box]))
        out.update(imperceptibility(item.image, edited, plan.box))
        return out

    def judge(self, rollout: Rollout) -> list[dict[str, float]]:
        """The Defender as the validity judge (``validity_judge: defender``, the ``paper``
        setting): one greedy yes/no answer per edit on a crop of its box: is the planned object
        there (add / replace), is the removed one gone (remove)."""
        cfg = self.config
        crops, prompts, expected = [], [], []
        for item, plan, edited in zip(rollout.items, rollout.plans, rollout.edited, strict=True):
            shape, colour = plan.shape, plan.colour
            if plan.kind == "remove":
                if item.scene is None or plan.object_id is None:
                    raise ValueError("the validity judge needs the scene graph of a remove edit")
                obj = item.scene.get_object(int(plan.object_id))
                shape, colour = obj.shape, obj.color
            if shape is None or colour is None:
                raise ValueError(f"the validity judge needs the shape and colour of a {plan.kind}")
            question, answer = judge_question(plan.kind, shape, colour)
            crops.append(judge_crop(edited, plan.box, cfg.judge_context, cfg.judge_min_side))
            prompts.append(build_prompt(question, [], cfg.answer_mode))
            expected.append(answer)
        answers = self.defender.generate(
            crops, prompts, n=1, max_new_tokens=cfg.max_new_tokens, batch_size=self.batch_size
        )
        return [
            judged_validity(a[0], e, cfg.answer_mode)
            for a, e in zip(answers, expected, strict=True)
        ]

    def correct_probability(self, rollout: Rollout, ask: Sequence[int]) -> list[float]:
        """The Defender's probability of the right answer on each asked edit (``confidence``)."""
        if not ask:
            return []
        mode = self.config.answer_mode
        score = getattr(self.defender, "completion_probability", None)
        if score is None:
            raise ValueError(
                "reward.confidence needs a Defender with completion_probability "
                f"({type(self.defender).__name__} has none)"
            )
        rows = [rollout.items[i].row for i in ask]
        return score(
            [Image.fromarray(np.asarray(rollout.edited[i], dtype=np.uint8), "RGB") for i in ask],
            [build_prompt(r["question"], list(r["options"]), mode) for r in rows],
            [
                target_completion(r["answer"], r.get("answer_text"), list(r["options"]), mode)
                for r in rows
            ],
            batch_size=self.batch_size,
        )

    def __call__(self, rollout: Rollout) -> dict[str, np.ndarray]:
        cfg = self.config
        rows: list[dict[str, float]] = []
        for item, plan, edited in zip(rollout.items, rollout.plans, rollout.edited, strict=True):
            rows.append(self.parts(item, plan, edited))
        if cfg.validity_judge == "defender":
            for r, judged in zip(rows, self.judge(rollout), strict=True):
                r["world_valid"] = r["valid"]
                r.update(judged)
        clean_ok = []
        for item in rollout.items:
            if not cfg.require_clean_correct:
                clean_ok.append(True)
            elif item.clean_answers is None:
                raise ValueError("require_clean_correct needs the clean answers of every item")
            else:
                clean_ok.append(
                    correct_rate(item.clean_answers, item.row, cfg.answer_mode) >= cfg.clean_min
                )
        ask = [
            i
            for i, r in enumerate(rows)
            if r["gate"] > 0
            and r["gt_ok"] > 0
            and clean_ok[i]
            and (cfg.validity_mode != "gate" or r["valid"] > 0)
        ]
        answers = defender_answers(
            self.defender,
            [rollout.edited[i] for i in ask],
            [rollout.items[i].row for i in ask],
            cfg,
            self.batch_size,
            self.seed,
        )
        self.seed += 1
        by_index = dict(zip(ask, answers, strict=True))
        sure: dict[int, float] = {}
        if cfg.confidence:
            sure = dict(zip(ask, self.correct_probability(rollout, ask), strict=True))
        for i, r in enumerate(rows):
            item = rollout.items[i]
            r["queried"] = float(i in by_index)
            if i in by_index:
                eff = efficacy_reward(
                    by_index[i],
                    item.row,
                    item.clean_answers,
                    mode=cfg.answer_mode,
                    graded=cfg.graded,
                    require_clean_correct=cfg.require_clean_correct,
                    clean_min=cfg.clean_min,
                )
            else:
                eff = {
                    "efficacy": 0.0,
                    "edited_wrong_rate": math.nan,
                    "all_wrong": math.nan,
                    "clean_ok": float(clean_ok[i]),
                }
            r.update({k: v for k, v in eff.items() if k != "clean_correct_rate"})
            if cfg.confidence:
                r["correct_probability"] = sure.get(i, math.nan)
                if i in sure:
                    r["efficacy"] = (1.0 - sure[i]) * r["clean_ok"]
            r.update(composite_reward(r, cfg))
        return {k: np.array([r[k] for r in rows], dtype=float) for k in rows[0]}


def group_advantages(
    rewards: np.ndarray,
    groups: np.ndarray,
    std: str = "group",
    clip: float = 5.0,
    eps: float = 1e-4,
) -> np.ndarray:
    """(r - group mean) / (std + eps), clipped to ±clip; ``std`` is the group's, the batch's
    (``global``) or 1 (``none``). A group whose edits all score the same gets advantage 0."""
    rewards = np.asarray(rewards, dtype=float)
    adv = np.zeros_like(rewards)
    for g in np.unique(groups):
        m = groups == g
        adv[m] = rewards[m] - rewards[m].mean()
        if std == "group":
            adv[m] /= rewards[m].std() + eps
    if std == "global":
        adv /= rewards.std() + eps
    return np.clip(adv, -clip, clip)


def clipped_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clipped surrogate ``max(-A r, -A clip(r, 1±c))`` (mean) and the ratio r."""
    ratio = torch.exp(log_prob - old_log_prob)
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    return loss.mean(), ratio


# ------------------------------------------------------------------------------------- trainer


def _mean(values: Any) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


class _AdaptersOff:
    """A LoRA editor with its adapters switched off: the frozen base model (the KL reference),
    without a second copy of the weights."""

    def __init__(self, editor: FlowEditor, peft_model: torch.nn.Module) -> None:
        self.editor = editor
        self.peft_model = peft_model

    def velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor:
        with self.peft_model.disable_adapter():
            return self.editor.velocity(x, timestep, cond)


# Data seeds of process k in a multi-process run: seed + k * RANK_SEED_STRIDE (process 0 draws
# exactly what a single-process run draws).
RANK_SEED_STRIDE = 1_000_003


class FlowGRPOTrainer:
    """Flow-GRPO on an editor and an ``EditPlanner``, in place.

    The editor is a ``BoxEditPipeline``'s UNet (the tiny default: crops around the box) or a
    ``QwenImageEditPipeline``'s transformer (``aot.attacker.qwen_edit``: packed latents, box
    tokens), fully fine-tuned or, with ``config.lora``, through peft LoRA adapters only.

    With an ``accelerate.Accelerator`` (``accelerate launch``, see ``aot.distributed``) every
    process samples its own items and noise (data seeds differ by process), the editor and the
    optimizers go through ``accelerator.prepare`` (device, mixed precision, DDP: the main
    process's weights are broadcast at the start) and the gradients of the editor and of the
    planner are averaged over the processes before every optimizer step
    (``_sync_gradients``), so every process takes the same step. Backward passes run under
    ``no_sync`` and the average is one explicit all-reduce because processes may run different
    numbers of backward passes (a replace adds a second editor pass only where one was drawn),
    which DDP's per-backward reduction would deadlock on. Data parallel only: FSDP / DeepSpeed
    sharding of the editor is refused (with LoRA a 20B editor fits one 80 GB GPU in bf16).
    """

    def __init__(
        self,
        pipe: Any,
        items: list[AttackItem],
        config: FlowGRPOConfig,
        reward_fn: RewardFn,
        seed: int = 0,
        planner: EditPlanner | None = None,
        accelerator: Any | None = None,
    ) -> None:
        if not items:
            raise ValueError("Flow-GRPO needs at least one (scene, question) with a valid edit")
        self.pipe, self.items, self.config, self.reward_fn = pipe, items, config, reward_fn
        self.seed = seed
        self.accelerator = accelerator
        self.qwen = is_qwen_image_edit(pipe)
        if accelerator is not None:
            _check_data_parallel(accelerator)
            pipe.to(accelerator.device)
        base = pipe.transformer if self.qwen else pipe.unet
        if self.qwen:  # only the transformer learns; the VAE and text encoder stay frozen
            pipe.vae.requires_grad_(False)
            pipe.text_encoder.requires_grad_(False)
        self.device = next(base.parameters()).device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.planner = planner or EditPlanner(config.planner)
        self.planner.to(self.device)
        self.base = base
        if config.gradient_checkpointing:
            base.enable_gradient_checkpointing()
        self.peft = None
        self._reference_module: torch.nn.Module | None = None
        want_reference = config.beta_kl > 0 or config.log_kl
        if config.lora:
            from peft import LoraConfig, get_peft_model

            self.peft = get_peft_model(base, LoraConfig(**config.lora))
            module: torch.nn.Module = self.peft
        else:
            module = base
            if want_reference:
                self._reference_module = copy.deepcopy(base).eval().requires_grad_(False)
        self.trainable = [p for p in module.parameters() if p.requires_grad]
        wd = config.weight_decay  # 0 by default: decay alone would drift the editor every step
        self.opt = torch.optim.AdamW(self.trainable, lr=config.lr, weight_decay=wd)
        self.planner_opt = torch.optim.AdamW(
            self.planner.parameters(), lr=config.planner_lr, weight_decay=wd
        )
        self.wrapped = module
        if accelerator is not None:
            self.wrapped, self.opt, self.planner_opt = accelerator.prepare(
                module, self.opt, self.planner_opt
            )
            # DDP would broadcast buffers before every forward, a collective that needs the
            # same number of forwards on every process; the editors train no buffers.
            if hasattr(self.wrapped, "forward_sync_buffers"):
                self.wrapped.forward_sync_buffers = False
            elif hasattr(self.wrapped, "broadcast_buffers"):
                self.wrapped.broadcast_buffers = False
            self._broadcast(list(self.planner.parameters()))
        self.editor = self._editor_for(self.wrapped)
        self.reference: FlowEditor | None = None
        if self._reference_module is not None:
            self.reference = self._editor_for(self._reference_module)
        elif self.peft is not None and want_reference:
            self.reference = _AdaptersOff(self._editor_for(self.peft), self.peft)
        rank = 0 if accelerator is None else accelerator.process_index
        data_seed = seed + RANK_SEED_STRIDE * rank
        self.gen = torch.Generator().manual_seed(data_seed)
        self.rng = np.random.default_rng(data_seed)
        self.step_count = 0

    def _editor_for(self, module: torch.nn.Module) -> FlowEditor:
        return QwenImageEditEditor(module) if self.qwen else UNetCropEditor(module)

    @property
    def is_main_process(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    # -- multi-process hooks (no-ops in a single process)
    def _broadcast(self, params: Sequence[torch.Tensor]) -> None:
        """Overwrites ``params`` with the main process's values."""
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return
        from accelerate.utils import broadcast

        with torch.no_grad():
            for p in params:
                broadcast(p.data, from_process=0)

    def _no_sync(self) -> contextlib.AbstractContextManager:
        if self.accelerator is None:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(self.wrapped)

    def _backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def _sync_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Averages the gradients of ``params`` over the processes: one flat all-reduce. A
        parameter with a gradient on some process only counts zero on the others; one with no
        gradient anywhere keeps none (so AdamW leaves it alone, as in a single process)."""
        acc = self.accelerator
        if acc is None or acc.num_processes == 1 or not params:
            return
        has = torch.tensor(
            [p.grad is not None for p in params], dtype=torch.float32, device=self.device
        )
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([has, *(g.detach().reshape(-1).float() for g in grads)])
        flat = acc.reduce(flat, reduction="sum")
        offset = len(params)
        for p, anywhere in zip(params, flat[: len(params)].tolist(), strict=True):
            n = p.numel()
            if anywhere > 0:
                p.grad = (flat[offset : offset + n] / acc.num_processes).view_as(p).to(p.dtype)
            offset += n

    # -- checkpoints
    def _editor_state(self) -> dict[str, torch.Tensor]:
        if self.peft is not None:
            from peft import get_peft_model_state_dict

            return get_peft_model_state_dict(self.peft)
        return self.base.state_dict()

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly: weights (the adapters only with
        LoRA), optimizers, RNGs."""
        ref = self._reference_module
        return {
            "step": self.step_count,
            "unet": self._editor_state(),
            "planner": self.planner.state_dict(),
            "reference": None if ref is None else ref.state_dict(),
            "opt": self.opt.state_dict(),
            "planner_opt": self.planner_opt.state_dict(),
            "gen": self.gen.get_state(),
            "rng": self.rng.bit_generator.state,
            "reward_seed": getattr(self.reward_fn, "seed", None),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])
        if self.peft is not None:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.peft, state["unet"])
        else:
            self.base.load_state_dict(state["unet"])
        self.planner.load_state_dict(state["planner"])
        if self._reference_module is not None and state["reference"] is not None:
            self._reference_module.load_state_dict(state["reference"])
        self.opt.load_state_dict(state["opt"])
        self.planner_opt.load_state_dict(state["planner_opt"])
        self.load_rng_state(state)
        if state.get("reward_seed") is not None and hasattr(self.reward_fn, "seed"):
            self.reward_fn.seed = state["reward_seed"]

    def rng_state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "rng": self.rng.bit_generator.state}

    def load_rng_state(self, state: Mapping[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.rng.bit_generator.state = state["rng"]

    def finish(self) -> Any:
        """The pipeline with the trained editor, LoRA adapters merged into its weights."""
        module = self.peft.merge_and_unload() if self.peft is not None else self.base
        module.eval()
        if self.qwen:
            self.pipe.register_modules(transformer=module)
        else:
            self.pipe.register_modules(unet=module)
        return self.pipe

    # -- sampling
    @torch.no_grad()
    def rollout(
        self, items: Sequence[AttackItem], group_size: int, generator: torch.Generator
    ) -> Rollout:
        """Sample ``group_size`` plans and edits per item (SDE, recorded)."""
        samples = [it for it in items for _ in range(group_size)]
        groups = np.repeat(np.arange(len(items)), group_size)
        self.planner.eval()
        actions, plan_lp, _ = self.planner([s.space for s in samples], generator=generator)
        plans = self.planner.to_plans([s.space for s in samples], actions)
        self.wrapped.eval()
        images = [_chw(s.image) for s in samples]
        if self.qwen:
            edited, passes = self._qwen_passes(images, plans, generator)
        else:
            edited, passes = self._box_passes(images, plans, generator)
        return Rollout(
            items=list(samples),
            groups=groups,
            plans=plans,
            actions=actions,
            plan_log_probs=plan_lp,
            passes=passes,
            edited=[e.permute(1, 2, 0).numpy() for e in edited],
        )

    def _box_passes(
        self, images: list[torch.Tensor], plans: list[EditPlan], generator: torch.Generator
    ) -> tuple[list[torch.Tensor], list[EditPass]]:
        """The box editor: a remove or add pass per plan, then the add pass of each replace."""
        cfg = self.config
        boxes = [p.box for p in plans]
        first = [REMOVE_CLASS if p.kind in ("remove", "replace") else p.class_id for p in plans]
        edited, cond, trace = run_edit_pass(
            self.editor, self.pipe, images, boxes, first, cfg, generator, self.reference
        )
        passes = [EditPass(torch.arange(len(plans)), cond, trace)]
        rep = [i for i, p in enumerate(plans) if p.kind == "replace"]
        if rep:
            out, cond2, trace2 = run_edit_pass(
                self.editor,
                self.pipe,
                [edited[i] for i in rep],
                [boxes[i] for i in rep],
                [plans[i].class_id for i in rep],
                cfg,
                generator,
                self.reference,
            )
            for j, i in enumerate(rep):
                edited[i] = out[j]
            passes.append(EditPass(torch.tensor(rep), cond2, trace2))
        return edited, passes

    def _qwen_passes(
        self, images: list[torch.Tensor], plans: list[EditPlan], generator: torch.Generator
    ) -> tuple[list[torch.Tensor], list[EditPass]]:
        """Qwen-Image-Edit: one pass per plan with its instruction ("add a red star", "replace
        it with ...", "remove the object"), batched by image size."""
        cfg = self.config
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(i)
        edited: list[torch.Tensor] = list(images)
        passes = []
        for idx in by_size.values():
            out, cond, trace = run_qwen_edit_pass(
                self.editor,
                self.pipe,
                [images[i] for i in idx],
                [plans[i].box for i in idx],
                [plans[i].prompt() for i in idx],
                cfg.sampling_steps,
                cfg.noise_level,
                generator,
                self.reference,
            )
            for j, i in enumerate(idx):
                edited[i] = out[j]
            passes.append(EditPass(torch.tensor(idx), cond, trace))
        return edited, passes

    def sampling_kl(self, rollout: Rollout) -> float:
        """Mean KL (per box pixel and step) of the sampling policy to the reference model."""
        vals = []
        for p in rollout.passes:
            for j in range(len(p.trace.ref_means)):
                kl = mean_kl(p.trace.means[j], p.trace.ref_means[j], p.trace.stds[j], p.cond.mask)
                vals.append(kl)
        return float(torch.cat(vals).mean()) if vals else math.nan

    # -- update
    def update(self, rollout: Rollout, advantages: np.ndarray) -> dict[str, float]:
        """PPO-clipped minibatch steps on the recorded transitions and on the plans."""
        cfg = self.config
        module = self.wrapped.train()
        self.planner.train()
        adv_all = torch.tensor(advantages, dtype=torch.float32, device=self.device)
        n = len(rollout)
        n_rec = len(rollout.passes[0].trace.log_probs)
        k = max(1, round(cfg.train_step_fraction * n_rec))
        stats: dict[str, list[float]] = {
            "clip_frac": [], "approx_kl": [], "ratio_dev_max": [], "policy_loss": [],
            "kl_loss": [], "plan_clip_frac": [], "plan_ratio_dev_max": [], "planner_entropy": [],
        }  # fmt: skip
        spaces = [it.space for it in rollout.items]
        planner_params = list(self.planner.parameters())
        with self._no_sync():
            for _ in range(cfg.inner_epochs):
                order = torch.randperm(n, generator=self.gen)
                for mb in order.chunk(cfg.minibatches):
                    chosen = sorted(torch.randperm(n_rec, generator=self.gen)[:k].tolist())
                    self.opt.zero_grad(set_to_none=True)
                    self.planner_opt.zero_grad(set_to_none=True)
                    if cfg.train_unet:
                        self._unet_terms(rollout, mb, chosen, adv_all, stats)
                    if cfg.train_planner:
                        lp, ent = self.planner(
                            [spaces[i] for i in mb], actions=rollout.actions[mb]
                        )[1:]
                        loss, ratio = clipped_loss(
                            lp, rollout.plan_log_probs[mb], adv_all[mb], cfg.planner_clip_range
                        )
                        self._backward(loss - cfg.planner_entropy * ent.mean())
                        dev = (ratio.detach() - 1).abs()
                        stats["plan_clip_frac"].append(
                            float((dev > cfg.planner_clip_range).float().mean())
                        )
                        stats["plan_ratio_dev_max"].append(float(dev.max()))
                        stats["planner_entropy"].append(float(ent.detach().mean()))
                        self._sync_gradients(planner_params)
                        torch.nn.utils.clip_grad_norm_(planner_params, cfg.grad_clip)
                        self.planner_opt.step()
                    if cfg.train_unet:
                        self._sync_gradients(self.trainable)
                        torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
                        self.opt.step()
        module.eval()
        self.planner.eval()
        return {k: _mean(v) for k, v in stats.items()}

    def _unet_terms(
        self,
        rollout: Rollout,
        mb: torch.Tensor,
        chosen: list[int],
        adv_all: torch.Tensor,
        stats: dict[str, list[float]],
    ) -> None:
        cfg = self.config
        in_mb = set(mb.tolist())
        for p in rollout.passes:
            local = torch.tensor([j for j, i in enumerate(p.idx.tolist()) if i in in_mb])
            if not len(local):
                continue
            sample_idx = p.idx[local]
            weight = len(local) / len(mb) / len(chosen)
            cond = p.cond.select(local)
            adv = adv_all[sample_idx]
            for j in chosen:
                lp, mean, std = step_log_prob(
                    self.editor, p.trace, j, cond, cfg.noise_level, local, cond.mask
                )
                old = p.trace.log_probs[j][local].to(lp.device)
                loss, ratio = clipped_loss(lp, old, adv, cfg.clip_range)
                if cfg.beta_kl > 0:
                    ref = p.trace.ref_means[j][local]
                    kl = mean_kl(mean, ref, std, cond.mask.to(mean)).mean()
                    loss = loss + cfg.beta_kl * kl
                    stats["kl_loss"].append(float(kl.detach()))
                self._backward(loss * weight)
                dev = (ratio.detach() - 1).abs()
                stats["clip_frac"].append(float((dev > cfg.clip_range).float().mean()))
                stats["ratio_dev_max"].append(float(dev.max()))
                stats["approx_kl"].append(float(((lp.detach() - old) ** 2 / 2).mean()))
                stats["policy_loss"].append(float(loss.detach()))

    # -- one RL step
    def step(self) -> dict[str, float]:
        cfg = self.config
        t0 = time.perf_counter()
        pick = self.rng.choice(
            len(self.items), min(cfg.prompts_per_step, len(self.items)), replace=False
        )
        rollout = self.rollout([self.items[i] for i in pick], cfg.group_size, self.gen)
        t1 = time.perf_counter()
        scores = self.reward_fn(rollout)
        t2 = time.perf_counter()
        adv = group_advantages(scores["reward"], rollout.groups, cfg.adv_std, cfg.adv_clip)
        upd = self.update(rollout, adv)
        t3 = time.perf_counter()
        self.step_count += 1
        row = self.summarize(rollout, scores)
        row.update(upd)
        row.update(
            step=self.step_count,
            groups_with_signal=float(
                np.mean(
                    [
                        scores["reward"][rollout.groups == g].std() > 0
                        for g in np.unique(rollout.groups)
                    ]
                )
            ),
            t_sample=t1 - t0,
            t_reward=t2 - t1,
            t_update=t3 - t2,
            t_step=t3 - t0,
        )
        return row

    def summarize(self, rollout: Rollout, scores: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Means of the reward parts, the edit-kind mix and per-kind validity."""
        r = scores["reward"]
        row: dict[str, float] = {"reward_mean": float(r.mean()), "reward_std": float(r.std())}
        names = {"gate": "gate_pass", "gt_ok": "gt_ok", "valid": "validity"}
        for key, value in scores.items():
            if key == "reward":
                continue
            row[names.get(key, key)] = _mean(value)
        if "queried" in scores and "edited_wrong_rate" in scores:
            row["efficacy_queried"] = _mean(np.asarray(scores["efficacy"])[scores["queried"] > 0])
        if "imperceptible" in scores:  # its own edit type; the loop above logged its share
            subtle = np.asarray(scores["imperceptible"]) > 0
            row["efficacy_imperceptible"] = _mean(np.asarray(scores["efficacy"])[subtle])
        kinds = np.array([p.kind for p in rollout.plans])
        for kind in ("add", "remove", "replace"):
            row[f"frac_{kind}"] = float((kinds == kind).mean())
            if "valid" in scores:
                row[f"validity_{kind}"] = _mean(np.asarray(scores["valid"])[kinds == kind])
        row["kl"] = self.sampling_kl(rollout)
        return row

    def edit_quality(self, n: int, seed: int) -> dict[str, float]:
        """Held-out procedural edit quality of the current box editor (ODE sampling); empty for
        Qwen-Image-Edit (the procedural quality suite drives the box editor's classes)."""
        if self.qwen:
            return {}
        q = edit_quality(self.pipe, n=n, seed=seed, steps=self.config.sampling_steps)
        return {
            f"quality_{k}": v
            for k, v in q.items()
            if k in ("mse_box", "colour_acc", "shape_acc", "remove_mse")
        }


def clean_answers(
    defender: Answerer,
    items: Sequence[AttackItem],
    config: AttackRewardConfig,
    batch_size: int,
    seed: int,
) -> None:
    """Fill each item's ``clean_answers`` (K samples of the frozen Defender on the clean image)."""
    answers = defender_answers(
        defender, [it.image for it in items], [it.row for it in items], config, batch_size, seed
    )
    for it, a in zip(items, answers, strict=True):
        it.clean_answers = list(a)


STATE_FILE = "flow_grpo_state.pt"


def _rank_state_file(state_file: Path, rank: int) -> Path:
    """Where process ``rank`` > 0 of a multi-process run keeps its own RNG states."""
    return state_file.with_name(f"{state_file.stem}.rank{rank}{state_file.suffix}")


def _check_data_parallel(accelerator: Any) -> None:
    """Flow-GRPO averages gradients itself (``FlowGRPOTrainer._sync_gradients``), which holds
    for replicated editors only (one process, DDP on GPUs or CPUs)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise NotImplementedError(
            f"Flow-GRPO runs data parallel only (one replica of the editor per process), not "
            f"{kind.value}; launch it with conf/accelerate/ddp_multi_gpu.yaml and set "
            "attacker lora (a LoRA-trained Qwen-Image-Edit fits one 80 GB GPU in bf16)"
        )


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a kill mid-save leaves the previous state file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_attacker_flow_grpo(
    pipe: Any,
    defender: Answerer | None,
    records: pd.DataFrame,
    images: Mapping[str, Any],
    params: Mapping[str, Any] | None,
    seed: int,
    *,
    scenes: Mapping[str, Scene] | pd.DataFrame | None = None,
    planner: EditPlanner | None = None,
    reward_fn: RewardFn | None = None,
    on_step: Callable[[dict[str, float], FlowGRPOTrainer], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    accelerator: Any | None = None,
) -> tuple[Any, pd.DataFrame]:
    """Flow-GRPO of the Attacker against the frozen ``defender``; returns (pipe, per-step log).

    ``pipe`` is a ``BoxEditPipeline`` (the tiny default) or a ``QwenImageEditPipeline``
    (``aot.attacker.qwen_edit``). ``records`` rows: question, options, answer, answer_text,
    family, target_boxes, image (key into ``images``, values PIL images or loaders), spec (for
    the guard) and the scene graph as a ``graph`` column or via ``scenes``. ``params`` are
    ``FlowGRPOConfig`` fields. The trained planner is attached as ``pipe.planner``; LoRA
    adapters (``lora``) are merged into the returned editor. Each log row holds the reward's
    mean/std and parts (gate pass rate, guard, efficacy, validity = on-policy edit quality, KL,
    clip fraction, edit kind mix, timings); every ``quality_every`` steps, after the last, and
    in a first row with ``step`` 0 (before any update) the held-out procedural edit quality of
    the box editor is added (``quality_*`` columns, NaN elsewhere), so the edit-quality curve
    sits next to the reward curve.

    With an ``accelerator`` (``accelerate launch``; ``aot.distributed``) every process trains
    on its own shard of the items (item ``i`` goes to process ``i % num_processes`` when there
    are enough) with its own noise, and gradients are averaged over the processes
    (``FlowGRPOTrainer``); the log rows are the main process's. Only the main process writes
    the resumable state (each other process writes its RNG states next to it); every process
    returns the same trained pipeline, and saving it is the caller's job (main process only).
    """
    config = FlowGRPOConfig.from_dict(params)
    world = 1 if accelerator is None else accelerator.num_processes
    rank = 0 if accelerator is None else accelerator.process_index
    with torch_threads(config.threads):
        items = build_items(records, images, config.planner, scenes, config.max_records)
        if world > 1 and len(items) >= world:
            items = items[rank::world]
        if reward_fn is None:
            if defender is None:
                raise ValueError("train_attacker_flow_grpo needs a defender or a reward_fn")
            reward_fn = DefenderAttackReward(defender, config.reward, config.defender_batch_size)
            if config.reward.require_clean_correct and items:
                clean_answers(defender, items, config.reward, config.defender_batch_size, seed)
                if config.filter_clean:
                    kept = [
                        it
                        for it in items
                        if correct_rate(it.clean_answers, it.row, config.reward.answer_mode)
                        >= config.reward.clean_min
                    ]
                    logger.info(
                        "Flow-GRPO: the Defender answers %d of %d items right on the clean image",
                        len(kept),
                        len(items),
                    )
                    if kept:
                        items = kept
                    else:
                        logger.warning("Flow-GRPO: no item is answered right on clean; keeping all")
        trainer = FlowGRPOTrainer(pipe, items, config, reward_fn, seed, planner, accelerator)
        rows: list[dict[str, float]] = []
        state_file = Path(checkpoint_dir) / STATE_FILE if checkpoint_dir else None
        if state_file is not None and state_file.is_file():
            # Our own file, written by `_save_state` below (optimizer and RNG states need pickle).
            saved = torch.load(state_file, weights_only=False, map_location=trainer.device)
            trainer.load_state(saved["trainer"])
            rows = list(saved["rows"])
            own = _rank_state_file(state_file, rank)
            if rank and own.is_file():
                trainer.load_rng_state(torch.load(own, weights_only=False))
            logger.info("Flow-GRPO: resumed from %s at step %d", state_file, trainer.step_count)
        elif config.quality_every:
            quality = trainer.edit_quality(config.quality_edits, seed + 999)
            if quality:
                rows.append({"step": 0, **quality})
        for step in range(trainer.step_count + 1, config.steps + 1):
            row = trainer.step()
            if config.quality_every and (step % config.quality_every == 0 or step == config.steps):
                row.update(trainer.edit_quality(config.quality_edits, seed + 999))
            rows.append(row)
            logger.info(
                "Flow-GRPO step %d: reward %.3f (gate %.2f, guard %.2f, efficacy %.3f, validity "
                "%.2f), kl %.2e, clip %.3f, %.1f s",
                step,
                row["reward_mean"],
                row.get("gate_pass", math.nan),
                row.get("gt_ok", math.nan),
                row.get("efficacy", math.nan),
                row.get("validity", math.nan),
                row.get("kl", math.nan),
                row.get("clip_frac", math.nan),
                row["t_step"],
            )
            if state_file is not None and config.save_every and step % config.save_every == 0:
                if trainer.is_main_process:
                    _save_state(state_file, {"trainer": trainer.state(), "rows": rows})
                else:
                    _save_state(_rank_state_file(state_file, rank), trainer.rng_state())
                if accelerator is not None:
                    accelerator.wait_for_everyone()
            if on_step is not None:
                on_step(row, trainer)
    pipe = trainer.finish()
    pipe.planner = trainer.planner
    log = pd.DataFrame(rows)
    first = [c for c in ("step", "reward_mean", "reward_std") if c in log]
    return pipe, log[first + [c for c in log.columns if c not in first]]
