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
pieces (rollout, reward, update) for benchmarks and tests. The settings are
``aot.attacker.flow_grpo_config``, the items and rollouts ``aot.attacker.rollout``, and the
default reward ``aot.attacker.attack_reward``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from aot.attacker.attack_reward import DefenderAttackReward, clean_answers
from aot.attacker.cold_start import torch_threads
from aot.attacker.flow_grpo_config import FlowGRPOConfig
from aot.attacker.flow_sampler import FlowEditor, QwenImageEditEditor, UNetCropEditor, step_log_prob
from aot.attacker.planner import EditPlan, EditPlanner
from aot.attacker.prompts import REMOVE_CLASS
from aot.attacker.quality import edit_quality
from aot.attacker.qwen_edit import is_qwen_image_edit, run_qwen_edit_pass
from aot.attacker.rollout import AttackItem, EditPass, RewardFn, Rollout, build_items, run_edit_pass
from aot.attacker.sde import mean_kl
from aot.bootstrap.pairs import Answerer  # the Defender interface the filter uses too
from aot.rewards.attack import correct_rate
from aot.world import Scene

logger = logging.getLogger(__name__)


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1)


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
# seconds per step, in the console log only (see `train_attacker_flow_grpo`)
STEP_TIMINGS = ("t_sample", "t_reward", "t_update", "t_step")


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
    # the step timings go to the console above and the summary below, not into the saved log, so
    # that a rerun writes the same bytes
    table = pd.DataFrame(rows)
    timings = table.reindex(columns=list(STEP_TIMINGS))
    means = timings.mean()  # over the training steps (the step-0 quality row has no timings)
    logger.info(
        "Flow-GRPO: %d steps, %.1f s a step (sampling %.1f, reward %.1f, update %.1f)",
        int(timings["t_step"].notna().sum()),
        means["t_step"],
        means["t_sample"],
        means["t_reward"],
        means["t_update"],
    )
    log = table.drop(columns=list(STEP_TIMINGS), errors="ignore")
    first = [c for c in ("step", "reward_mean", "reward_std") if c in log]
    return pipe, log[first + [c for c in log.columns if c not in first]]
