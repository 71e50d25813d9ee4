"""Flow-GRPO sampling behind one editor interface: any velocity model, per-step log-probs.

``FlowEditor`` is the only thing the sampler and the RL update need from a model: given the
state, the scheduler timestep and a conditioning, the predicted flow-matching velocity. The tiny
default (``UNetCropEditor``: the box-edit ``UNet2DModel`` on 32 px crops) and a wrapper of
``QwenImageEditPipeline``'s transformer (``QwenImageEditEditor``, packed latents) both fit it.

Timesteps and sigmas come from the diffusers scheduler (``FlowMatchEulerDiscreteScheduler``);
the transition is the Flow-GRPO SDE step of ``aot.attacker.sde`` (``shared/notes/stack.md`` §4),
which at ``noise_level=0`` is exactly ``scheduler.step`` (tested). Every stochastic step is
recorded in a ``SampleTrace`` (state, sampled next state, Gaussian mean/std, log-prob and
optionally a frozen reference model's mean for the KL term) so an update can recompute the
log-probs of the very same transitions (``step_log_prob``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from aot.attacker.editing import velocity as unet_velocity
from aot.attacker.sde import SampleTrace, gaussian_log_prob, sde_mean_std


@runtime_checkable
class FlowEditor(Protocol):
    """A flow-matching velocity model: ``velocity(x, timestep, cond) -> v`` (same shape as x).

    ``timestep`` is the scheduler's timestep (``1000 * sigma``), one per batch item; ``cond`` is
    whatever the model is conditioned on, indexable along the batch by ``select_condition``.
    """

    def velocity(self, x: torch.Tensor, timestep: torch.Tensor, cond: Any) -> torch.Tensor: ...


def select_condition(cond: Any, idx: torch.Tensor) -> Any:
    """The batch items ``idx`` of a conditioning: its ``select`` method, a tensor, or a dict /
    tuple of those (so simple conditionings need no class)."""
    if hasattr(cond, "select") and not isinstance(cond, torch.Tensor):
        return cond.select(idx)
    if isinstance(cond, torch.Tensor):
        return cond[idx.to(cond.device)]
    if isinstance(cond, dict):
        return {k: select_condition(v, idx) for k, v in cond.items()}
    if isinstance(cond, tuple | list):
        return type(cond)(select_condition(v, idx) for v in cond)
    if cond is None:
        return None
    raise TypeError(f"cannot select batch items of a {type(cond).__name__} conditioning")


@dataclass
class CropConditioning:
    """What the crop editor is conditioned on: source crops (B,3,R,R) in [-1,1], box masks
    (B,1,R,R) and class ids (B,)."""

    src: torch.Tensor
    mask: torch.Tensor
    class_ids: torch.Tensor

    def select(self, idx: torch.Tensor) -> CropConditioning:
        return CropConditioning(self.src[idx], self.mask[idx], self.class_ids[idx])

    def __len__(self) -> int:
        return int(self.class_ids.shape[0])


class UNetCropEditor:
    """The tiny default: the 7-channel box-edit ``UNet2DModel`` (``aot.attacker.editing``)."""

    def __init__(self, unet: UNet2DModel, guidance_scale: float = 1.0) -> None:
        self.unet = unet
        self.guidance_scale = guidance_scale

    def velocity(
        self, x: torch.Tensor, timestep: torch.Tensor, cond: CropConditioning
    ) -> torch.Tensor:
        src = cond.src.to(x.device, x.dtype)
        mask = cond.mask.to(x.device, x.dtype)
        return unet_velocity(
            self.unet, x, src, mask, cond.class_ids.to(x.device), timestep, self.guidance_scale
        )


@dataclass
class QwenEditConditioning:
    """Conditioning of ``QwenImageEditPipeline``'s transformer: packed latents of the image to
    edit (B, L, C), the prompt embeddings (B, T, D) and mask (B, T), and the per-item image
    shapes the pipeline passes as ``img_shapes``. ``mask`` (B, L, 1), when set, marks the
    latent tokens the edit may change (the edit box; ``aot.attacker.qwen_edit``): the sampler
    holds the others at the source and log-probs average over the marked tokens only."""

    image_latents: torch.Tensor
    prompt_embeds: torch.Tensor
    prompt_embeds_mask: torch.Tensor | None
    img_shapes: list[Any]
    mask: torch.Tensor | None = None

    def select(self, idx: torch.Tensor) -> QwenEditConditioning:
        ids = [int(i) for i in idx]
        text_mask = None if self.prompt_embeds_mask is None else self.prompt_embeds_mask[idx]
        return QwenEditConditioning(
            self.image_latents[idx],
            self.prompt_embeds[idx],
            text_mask,
            [self.img_shapes[i] for i in ids],
            None if self.mask is None else self.mask[idx],
        )

    def __len__(self) -> int:
        return int(self.image_latents.shape[0])


class QwenImageEditEditor:
    """``QwenImageEditPipeline``'s denoiser step as a ``FlowEditor``: the noisy packed latents
    are concatenated with the image latents along the sequence, the transformer is called with
    ``timestep / 1000`` and the prediction for the noisy part is the velocity (as in the
    pipeline's denoising loop, diffusers 0.42; true CFG is not applied). Inputs are cast to the
    transformer's dtype (bf16 at paper scale) and the velocity back to the state's, so the SDE
    and its log-probs can stay in float32."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer

    def _dtype(self) -> torch.dtype:
        module = getattr(self.transformer, "module", self.transformer)  # DDP wraps in .module
        dtype = getattr(module, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else next(module.parameters()).dtype

    def velocity(
        self, x: torch.Tensor, timestep: torch.Tensor, cond: QwenEditConditioning
    ) -> torch.Tensor:
        dtype = self._dtype()
        out = self.transformer(
            hidden_states=torch.cat([x, cond.image_latents.to(x)], dim=1).to(dtype),
            timestep=(timestep.to(x.dtype) / 1000).to(dtype),
            encoder_hidden_states=cond.prompt_embeds.to(x.device, dtype),
            encoder_hidden_states_mask=cond.prompt_embeds_mask,
            img_shapes=cond.img_shapes,
            return_dict=False,
        )[0]
        return out[:, : x.shape[1]].to(x.dtype)


def _known(known: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (1 - sigma) * known + sigma * noise


@torch.no_grad()
def sample_flow_sde(
    editor: FlowEditor,
    scheduler: FlowMatchEulerDiscreteScheduler,
    cond: Any,
    shape: Sequence[int],
    steps: int = 10,
    noise_level: float = 0.7,
    generator: torch.Generator | list[torch.Generator] | None = None,
    *,
    mask: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
    sde_steps: Sequence[int] | None = None,
    reference: FlowEditor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    set_timesteps_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, SampleTrace]:
    """Sample x0 from noise with the Flow-GRPO SDE; returns (x0, trace of stochastic steps).

    ``scheduler.set_timesteps(steps, **set_timesteps_kwargs)`` fixes timesteps and sigmas.
    Steps in ``sde_steps`` (default: all but the last, whose std ~1e-3 makes ratios unstable)
    are stochastic and recorded; the others are plain Euler steps. ``noise_level=0`` makes every
    step the scheduler's Euler step and records nothing. With ``known`` (and ``mask``) the state
    outside the mask is reset to ``known`` noised to the current sigma before every model call
    (known-region inpainting) and the result outside the mask is ``known`` exactly; log-probs
    average over mask pixels only. ``reference`` (a frozen editor) adds its mean at every
    recorded step to ``trace.ref_means``.
    """
    scheduler.set_timesteps(steps, device=device, **(set_timesteps_kwargs or {}))
    sigmas = scheduler.sigmas.to(device, dtype)
    timesteps = scheduler.timesteps
    n = len(timesteps)
    stochastic = set(range(n - 1) if sde_steps is None else sde_steps) if noise_level > 0 else set()
    if any(not 0 <= i < n for i in stochastic):
        raise ValueError(f"sde_steps {sorted(stochastic)} must lie in [0, {n})")
    noise = randn_tensor(
        tuple(shape), generator=generator, device=torch.device(device), dtype=dtype
    )
    if mask is not None:
        mask = mask.to(device, dtype)
    if known is not None:
        known = known.to(device, dtype)
        if mask is None:
            raise ValueError("known-region sampling needs a mask")
    trace = SampleTrace(sigmas=sigmas)
    x = noise
    for i, t in enumerate(timesteps):
        if known is not None:
            x = mask * x + (1 - mask) * _known(known, noise, sigmas[i])
        ts = t.expand(x.shape[0]).to(device)
        v = editor.velocity(x, ts, cond)
        if i not in stochastic:
            x = x + (sigmas[i + 1] - sigmas[i]) * v  # == scheduler.step (deterministic)
            continue
        mean, std = sde_mean_std(sigmas, i, x, v, noise_level)
        eps = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        nxt = mean + std * eps
        trace.indices.append(i)
        trace.timesteps.append(t)
        trace.states.append(x)
        trace.next_states.append(nxt)
        trace.means.append(mean)
        trace.stds.append(std)
        trace.log_probs.append(gaussian_log_prob(nxt, mean, std, mask))
        if reference is not None:
            v_ref = reference.velocity(x, ts, cond)
            trace.ref_means.append(sde_mean_std(sigmas, i, x, v_ref, noise_level)[0])
        x = nxt
    if known is not None:
        x = mask * x + (1 - mask) * known
    return x, trace


def step_log_prob(
    editor: FlowEditor,
    trace: SampleTrace,
    j: int,
    cond: Any,
    noise_level: float,
    idx: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-prob, mean, std) of recorded step ``j`` under ``editor`` (with gradients), for the
    batch items ``idx`` (all when None); ``cond`` and ``mask`` are already restricted to them."""
    x, nxt = trace.states[j], trace.next_states[j]
    if idx is not None:
        x, nxt = x[idx], nxt[idx]
    ts = trace.timesteps[j].expand(x.shape[0]).to(x.device)
    v = editor.velocity(x, ts, cond)
    mean, std = sde_mean_std(trace.sigmas, trace.indices[j], x, v, noise_level)
    m = None if mask is None else mask.to(x.device, x.dtype)
    return gaussian_log_prob(nxt, mean, std, m), mean, std
