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
    # Filled by ``aot.attacker.flow_sampler.sample_flow_sde`` (empty for ``sample_crops``): the
    # scheduler index of each recorded step, the policy's Gaussian mean and std there, and the
    # reference model's mean (for the KL term) when a reference was given.
    indices: list[int] = field(default_factory=list)
    means: list[torch.Tensor] = field(default_factory=list)
    stds: list[torch.Tensor] = field(default_factory=list)
    ref_means: list[torch.Tensor] = field(default_factory=list)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean over the mask (all pixels when None): only box pixels are the action,
    the rest is overwritten by the noised source at every step."""
    if mask is None:
        return x.mean(dim=tuple(range(1, x.ndim)))
    m = mask.expand_as(x)
    return (x * m).sum(dim=tuple(range(1, x.ndim))) / m.sum(dim=tuple(range(1, x.ndim)))


def sde_mean_std(
    sigmas: torch.Tensor, i: int, x: torch.Tensor, v: torch.Tensor, noise_level: float = 0.7
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the Flow-GRPO SDE transition ``sigmas[i] -> sigmas[i+1]``.

    With ``noise_level=0`` the std is 0 and the mean is exactly the Euler step
    ``x + (sigma_next - sigma) v`` of ``FlowMatchEulerDiscreteScheduler.step``.
    """
    sigma, dt = sigmas[i], sigmas[i + 1] - sigmas[i]
    sig = torch.where(sigma == 1, sigmas[1], sigma)
    std_t = (sig / (1 - sig)).sqrt() * noise_level
    mean = x * (1 + std_t**2 / (2 * sig) * dt) + v * (1 + std_t**2 * (1 - sig) / (2 * sig)) * dt
    return mean, std_t * (-dt).sqrt()


def gaussian_log_prob(
    sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample mean (over ``mask`` pixels) of the elementwise Gaussian log-density."""
    logp = -((sample.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return masked_mean(logp, mask)


def mean_kl(
    mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """KL between two Gaussian steps sharing ``std``: ``(mu - mu_ref)^2 / (2 std^2)``, per sample
    averaged over ``mask`` pixels (the Flow-GRPO KL to the reference policy)."""
    return masked_mean((mean - ref_mean) ** 2 / (2 * std**2), mask)


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
    mean, std = sde_mean_std(sigmas, i, x, v, noise_level)
    if prev_sample is None:
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        prev_sample = mean + std * noise
    return prev_sample, gaussian_log_prob(prev_sample, mean, std, mask)
