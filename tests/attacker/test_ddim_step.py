"""The stochastic DDIM step with its log-prob (for editors trained with a diffusion loss):
diffusers' DDIMScheduler.step in the deterministic limit and with the same noise, and a
log-prob that is the Gaussian density of the recorded transition."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from aot.attacker.sde import ddim_mean_std, ddim_step


def _scheduler(prediction_type: str = "epsilon", clip_sample: bool = False) -> DDIMScheduler:
    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=clip_sample,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    sched.set_timesteps(6)
    return sched


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("i", [0, 2, 5])
def test_eta_zero_is_the_scheduler_step(prediction_type: str, i: int) -> None:
    sched = _scheduler(prediction_type, clip_sample=prediction_type == "sample")
    t = int(sched.timesteps[i])
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mean, std = ddim_mean_std(sched, out, t, x, eta=0.0)
    assert float(std) == 0.0
    torch.testing.assert_close(mean, sched.step(out, t, x, eta=0.0).prev_sample)


@pytest.mark.parametrize("i", [0, 3, 5])
def test_stochastic_step_matches_the_scheduler_with_the_same_noise(i: int) -> None:
    sched = _scheduler()
    t, eta = int(sched.timesteps[i]), 1.0
    x, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    sample, log_prob = ddim_step(sched, eps, t, x, eta, generator=torch.Generator().manual_seed(5))
    want = sched.step(eps, t, x, eta=eta, generator=torch.Generator().manual_seed(5)).prev_sample
    torch.testing.assert_close(sample, want)
    # the log-prob is the density of that sample under N(mean, std^2), per pixel on average
    mean, std = ddim_mean_std(sched, eps, t, x, eta)
    z = (sample - mean) / std
    expected = (-(z**2) / 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).mean(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob, expected)
    # scoring the recorded transition gives the same log-prob, and the mean scores highest
    _, again = ddim_step(sched, eps, t, x, eta, prev_sample=sample)
    torch.testing.assert_close(again, log_prob)
    _, at_mean = ddim_step(sched, eps, t, x, eta, prev_sample=mean)
    assert (at_mean > log_prob).all()


def test_the_log_prob_carries_the_model_gradient() -> None:
    sched = _scheduler()
    t = int(sched.timesteps[1])
    x = torch.randn(1, 4, 8, 8)
    eps = torch.randn(1, 4, 8, 8, requires_grad=True)
    sample, _ = ddim_step(sched, eps.detach(), t, x, generator=torch.Generator().manual_seed(0))
    _, log_prob = ddim_step(sched, eps, t, x, prev_sample=sample)
    log_prob.sum().backward()
    assert eps.grad is not None and eps.grad.abs().sum() > 0


def test_bad_ddim_steps_are_rejected() -> None:
    sched = _scheduler()
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="eta > 0"):
        ddim_step(sched, x, int(sched.timesteps[0]), x, eta=0.0)
    thresholded = DDIMScheduler(thresholding=True)
    thresholded.set_timesteps(4)
    with pytest.raises(ValueError, match="thresholding"):
        ddim_mean_std(thresholded, x, int(thresholded.timesteps[0]), x)
