"""Tensor-level editing: the flow-matching loss and the known-region sampler on crops.

Training and sampling live here (not in the pipeline) so the cold start and the RL trainer call
the same functions the pipeline does. The loss and the known-region loop are hand-written:
diffusers has the scheduler (used as is) but no conditional flow-matching loss for inpainting.
Crop helpers are re-exported from ``aot.attacker.crops``.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from aot.attacker.crops import (
    model_to_uint8,
    paste_back,
    pil_to_model,
    to_crops,
    uint8_to_model,
)
from aot.attacker.prompts import NULL_CLASS
from aot.attacker.sde import SampleTrace, flow_sde_step

__all__ = [
    "flow_matching_loss",
    "model_to_uint8",
    "paste_back",
    "pil_to_model",
    "sample_crops",
    "to_crops",
    "uint8_to_model",
    "velocity",
]


def _col(s: torch.Tensor) -> torch.Tensor:
    return s.view(-1, 1, 1, 1)


def flow_matching_loss(
    unet: UNet2DModel,
    x0: torch.Tensor,
    src: torch.Tensor,
    mask: torch.Tensor,
    class_ids: torch.Tensor,
    p_uncond: float = 0.1,
    w_out: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Conditional flow-matching loss on crops, in the FlowMatchEuler convention.

    ``x_s = (1-s) x0 + s eps``, target velocity ``eps - x0``, ``timestep = 1000 s``. Box pixels
    weigh 1 and context pixels ``w_out`` (they are replaced by the source when sampling, but a
    little weight keeps the model consistent at the seam). A ``p_uncond`` share of the labels
    becomes the null class so classifier-free guidance is available.
    """
    b, dev = x0.shape[0], x0.device
    s = torch.rand(b, generator=generator).to(dev, x0.dtype)
    noise = randn_tensor(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
    drop = (torch.rand(b, generator=generator) < p_uncond).to(dev)
    labels = torch.where(drop, torch.full_like(class_ids, NULL_CLASS), class_ids)
    xt = (1 - _col(s)) * x0 + _col(s) * noise
    pred = unet(torch.cat([xt, src, mask], 1), s * 1000, class_labels=labels).sample
    weight = mask + w_out * (1 - mask)
    return ((pred - (noise - x0)) ** 2 * weight).sum() / (weight.sum() * x0.shape[1])


def velocity(
    unet: UNet2DModel,
    x: torch.Tensor,
    src: torch.Tensor,
    mask: torch.Tensor,
    class_ids: torch.Tensor,
    t: torch.Tensor,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Predicted velocity; with ``guidance_scale != 1`` one doubled batch gives CFG."""
    inp = torch.cat([x, src, mask], 1)
    ts = t.expand(len(x)).to(x.device)
    if guidance_scale == 1.0:
        return unet(inp, ts, class_labels=class_ids).sample
    null = torch.full_like(class_ids, NULL_CLASS)
    both = unet(
        torch.cat([inp, inp]), torch.cat([ts, ts]), class_labels=torch.cat([class_ids, null])
    )
    cond, uncond = both.sample.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


@torch.no_grad()
def sample_crops(
    unet: UNet2DModel,
    scheduler: FlowMatchEulerDiscreteScheduler,
    src: torch.Tensor,
    mask: torch.Tensor,
    class_ids: torch.Tensor,
    steps: int = 8,
    generator: torch.Generator | list[torch.Generator] | None = None,
    sde_noise_level: float | None = None,
    guidance_scale: float = 1.0,
    trace: SampleTrace | None = None,
) -> torch.Tensor:
    """Edited crops (B,3,R,R) in [-1,1]: Euler ODE (default) or the Flow-GRPO SDE.

    Known-region replacement: before every model call the state outside the box is reset to the
    source noised to the current sigma, so the model only decides the box; the result outside
    the box is the source exactly. With ``sde_noise_level`` the steps are stochastic and, if a
    ``trace`` is given, each transition except the last (deterministic Euler to sigma 0) is
    recorded with its log-prob over box pixels.
    """
    dev, dtype = unet.device, unet.dtype
    src, mask, class_ids = src.to(dev, dtype), mask.to(dev, dtype), class_ids.to(dev)
    scheduler.set_timesteps(steps, device=dev)
    sigmas = scheduler.sigmas.to(dtype)
    noise = randn_tensor(src.shape, generator=generator, device=dev, dtype=dtype)
    if trace is not None:
        trace.sigmas = sigmas
    x = noise
    last = len(scheduler.timesteps) - 1
    for i, t in enumerate(scheduler.timesteps):
        x = mask * x + (1 - mask) * ((1 - sigmas[i]) * src + sigmas[i] * noise)
        v = velocity(unet, x, src, mask, class_ids, t, guidance_scale)
        if sde_noise_level is None:
            x = scheduler.step(v, t, x).prev_sample
        elif i == last:
            x = x + (sigmas[i + 1] - sigmas[i]) * v  # plain Euler: same as scheduler.step
        else:
            nxt, logp = flow_sde_step(sigmas, i, x, v, sde_noise_level, None, generator, mask)
            if trace is not None:
                trace.timesteps.append(t)
                trace.states.append(x)
                trace.next_states.append(nxt)
                trace.log_probs.append(logp)
            x = nxt
    return mask * x + (1 - mask) * src
