"""The Flow-GRPO SDE step with its Gaussian log-prob, for RL on the flow-matching Attacker.

Hand-written because no diffusers scheduler returns log-probs (``shared/notes/stack.md`` §4):
``FlowMatchEulerDiscreteScheduler.step`` gives only the next sample. In the limit
``noise_level -> 0`` this step equals the scheduler's Euler step (checked in the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from diffusers.utils.torch_utils import randn_tensor

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class SampleTrace:
    """What an RL update needs to recompute log-probs: per recorded SDE step, the model's input
    state, the sampled next state, the timestep and the log-prob under the sampling policy."""

    sigmas: torch.Tensor
    timesteps: list[torch.Tensor] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)
    next_states: list[torch.Tensor] = field(default_factory=list)
    log_probs: list[torch.Tensor] = field(default_factory=list)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean over the mask (all pixels when None): only box pixels are the action,
    the rest is overwritten by the noised source at every step."""
    if mask is None:
        return x.mean(dim=tuple(range(1, x.ndim)))
    m = mask.expand_as(x)
    return (x * m).sum(dim=tuple(range(1, x.ndim))) / m.sum(dim=tuple(range(1, x.ndim)))


def flow_sde_step(
    sigmas: torch.Tensor,
    i: int,
    x: torch.Tensor,
    v: torch.Tensor,
    noise_level: float = 0.7,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Flow-GRPO SDE step from ``sigmas[i]`` to ``sigmas[i+1]``: (next state, log-prob).

    Pass ``prev_sample`` to score a recorded transition instead of sampling a new one. Do not use
    it on the final step to sigma 0 (its std is ~1e-3 and the ratio becomes unstable).
    """
    sigma, dt = sigmas[i], sigmas[i + 1] - sigmas[i]
    sig = torch.where(sigma == 1, sigmas[1], sigma)
    std_t = (sig / (1 - sig)).sqrt() * noise_level
    mean = x * (1 + std_t**2 / (2 * sig) * dt) + v * (1 + std_t**2 * (1 - sig) / (2 * sig)) * dt
    std = std_t * (-dt).sqrt()
    if prev_sample is None:
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        prev_sample = mean + std * noise
    logp = -((prev_sample.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return prev_sample, masked_mean(logp, mask)
