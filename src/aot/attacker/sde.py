"""The Flow-GRPO SDE step with its Gaussian log-prob, for RL on the flow-matching Attacker, and
the stochastic DDIM step (eta > 0) with its log-prob for editors trained with a diffusion loss.

Hand-written because no diffusers scheduler returns log-probs (``shared/notes/stack.md`` §4):
``FlowMatchEulerDiscreteScheduler.step`` gives only the next sample. In the limit
``noise_level -> 0`` this step equals the scheduler's Euler step (checked in the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

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


# ------------------------------------------------------------------ DDIM (epsilon-type editors)


def ddim_mean_std(
    scheduler: Any, model_output: torch.Tensor, timestep: int, x: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``DDIMScheduler.step``'s transition from ``timestep`` (DDIM eq. 12/16).

    For editors trained with a diffusion (not flow-matching) loss: diffusers' DDIM step returns
    only the next sample, so this re-derives its Gaussian, for every ``prediction_type`` and with
    the scheduler's x0 clipping. At ``eta=0`` the std is 0 and the mean is the scheduler's
    deterministic step (checked in the tests); Flow-GRPO needs ``eta > 0``.
    """
    cfg = scheduler.config
    if cfg.thresholding:
        raise ValueError("ddim_mean_std: dynamic thresholding has no Gaussian step; disable it")
    prev = timestep - cfg.num_train_timesteps // scheduler.num_inference_steps
    a_t = scheduler.alphas_cumprod[timestep]
    a_prev = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    b_t = 1 - a_t
    if cfg.prediction_type == "epsilon":
        x0, eps = (x - b_t**0.5 * model_output) / a_t**0.5, model_output
    elif cfg.prediction_type == "sample":
        x0 = model_output
        eps = (x - a_t**0.5 * x0) / b_t**0.5
    elif cfg.prediction_type == "v_prediction":
        x0 = a_t**0.5 * x - b_t**0.5 * model_output
        eps = a_t**0.5 * model_output + b_t**0.5 * x
    else:
        raise ValueError(f"ddim_mean_std: unknown prediction_type {cfg.prediction_type!r}")
    if cfg.clip_sample:
        x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
    std = eta * scheduler._get_variance(timestep, prev) ** 0.5
    mean = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
    return mean, torch.as_tensor(std, dtype=x.dtype, device=x.device)


def ddim_step(
    scheduler: Any,
    model_output: torch.Tensor,
    timestep: int,
    x: torch.Tensor,
    eta: float = 1.0,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One stochastic DDIM step (``eta > 0``) with its log-prob: (next state, log-prob).

    Draws the noise as ``DDIMScheduler.step`` does (``randn_tensor`` with the same generator), so
    for the same generator state both return the same sample. Pass ``prev_sample`` to score a
    recorded transition instead.
    """
    if eta <= 0:
        raise ValueError(f"ddim_step: the log-prob needs eta > 0, got {eta}")
    mean, std = ddim_mean_std(scheduler, model_output, timestep, x, eta)
    if prev_sample is None:
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        prev_sample = mean + std * noise
    return prev_sample, gaussian_log_prob(prev_sample, mean, std.expand_as(x), mask)
