"""The Flow-GRPO sampler: scheduler-exact deterministic limit, recorded log-probs that recompute
exactly, known-region inpainting, and the editor interface (crop UNet and Qwen transformer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from aot.attacker import BoxEditPipeline, make_edit_pairs
from aot.attacker.flow_sampler import (
    CropConditioning,
    FlowEditor,
    QwenEditConditioning,
    QwenImageEditEditor,
    UNetCropEditor,
    sample_flow_sde,
    step_log_prob,
)
from aot.attacker.sde import gaussian_log_prob, mean_kl, sde_mean_std
from aot.world import WorldConfig


def _cond(n: int = 4) -> CropConditioning:
    pairs = make_edit_pairs(np.random.default_rng(1), WorldConfig(), n, crop_size=16)
    _, src, mask, cls = pairs.batch(torch.arange(n))
    return CropConditioning(src, mask, cls)


@pytest.mark.parametrize("i", [0, 1, 3])
def test_sde_step_at_noise_zero_is_the_scheduler_step(i: int) -> None:
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(5)
    x, v = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    want = sched.step(v, sched.timesteps[i], x).prev_sample
    mean, std = sde_mean_std(sched.sigmas, i, x, v, noise_level=0.0)
    assert float(std) == 0.0
    assert torch.equal(mean, want)


def test_sampler_at_noise_zero_reproduces_the_scheduler_loop(tiny_pipe: BoxEditPipeline) -> None:
    cond = _cond()
    editor = UNetCropEditor(tiny_pipe.unet)
    sched = FlowMatchEulerDiscreteScheduler()
    out, trace = sample_flow_sde(
        editor, sched, cond, cond.src.shape, 4, 0.0, torch.Generator().manual_seed(0)
    )
    assert len(trace.log_probs) == 0  # nothing stochastic, nothing recorded
    # The same loop written with diffusers' own step function.
    x = torch.randn(cond.src.shape, generator=torch.Generator().manual_seed(0))
    sched.set_timesteps(4)
    with torch.no_grad():
        for t in sched.timesteps:
            v = editor.velocity(x, t.expand(len(x)), cond)
            x = sched.step(v, t, x).prev_sample
    assert torch.equal(out, x)


def test_recorded_log_probs_recompute_exactly(tiny_pipe: BoxEditPipeline) -> None:
    cond = _cond()
    editor = UNetCropEditor(tiny_pipe.unet)
    _, trace = sample_flow_sde(
        editor,
        tiny_pipe.scheduler,
        cond,
        cond.src.shape,
        5,
        0.7,
        torch.Generator().manual_seed(0),
        mask=cond.mask,
        known=cond.src,
        reference=editor,
    )
    assert trace.indices == [0, 1, 2, 3]  # the last step (to sigma 0) is deterministic
    idx = torch.tensor([2, 0])
    with torch.no_grad():
        for j in range(len(trace.log_probs)):
            lp, mean, std = step_log_prob(
                editor, trace, j, cond.select(idx), 0.7, idx, cond.mask[idx]
            )
            torch.testing.assert_close(lp, trace.log_probs[j][idx], atol=1e-5, rtol=0)
            torch.testing.assert_close(torch.exp(lp - trace.log_probs[j][idx]), torch.ones(2))
            # The reference is the same model here, so its mean is the policy's and KL is 0.
            assert torch.equal(trace.ref_means[j], trace.means[j])
            assert float(mean_kl(mean, trace.ref_means[j][idx], std, cond.mask[idx]).max()) < 1e-8


def test_log_prob_prefers_the_mean_and_masks_pixels() -> None:
    mean, std = torch.zeros(2, 1, 4, 4), torch.tensor(0.5)
    near, far = mean + 0.1, mean + 1.0
    assert (gaussian_log_prob(near, mean, std) > gaussian_log_prob(far, mean, std)).all()
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1
    half = far.clone()
    half[:, :, :2] = 0.1  # only the masked half is near the mean
    torch.testing.assert_close(
        gaussian_log_prob(half, mean, std, mask), gaussian_log_prob(near, mean, std)
    )


def test_known_region_is_exact_outside_the_mask(tiny_pipe: BoxEditPipeline) -> None:
    cond = _cond()
    out, _ = sample_flow_sde(
        UNetCropEditor(tiny_pipe.unet),
        tiny_pipe.scheduler,
        cond,
        cond.src.shape,
        3,
        0.7,
        torch.Generator().manual_seed(0),
        mask=cond.mask,
        known=cond.src,
    )
    outside = cond.mask.expand_as(out) == 0
    assert torch.equal(out[outside], cond.src[outside])
    assert not torch.equal(out, cond.src)


def test_qwen_image_edit_transformer_plugs_in() -> None:
    """The same sampler and recompute run on diffusers' QwenImage transformer (packed latents)."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(8, 4, 4),
    ).eval()
    b, tokens = 2, 16  # 8x8 latents packed 2x2 -> 16 tokens of 16 channels
    cond = QwenEditConditioning(
        torch.randn(b, tokens, 16),
        torch.randn(b, 5, 32),
        torch.ones(b, 5, dtype=torch.long),
        [[(1, 4, 4), (1, 4, 4)]] * b,
    )
    editor = QwenImageEditEditor(transformer)
    assert isinstance(editor, FlowEditor)
    x, trace = sample_flow_sde(
        editor,
        FlowMatchEulerDiscreteScheduler(),
        cond,
        (b, tokens, 16),
        3,
        0.7,
        torch.Generator().manual_seed(0),
    )
    assert x.shape == (b, tokens, 16) and len(trace.log_probs) == 2
    idx = torch.tensor([1])
    with torch.no_grad():
        lp, _, _ = step_log_prob(editor, trace, 1, cond.select(idx), 0.7, idx)
    torch.testing.assert_close(lp, trace.log_probs[1][idx], atol=1e-5, rtol=0)


def test_bad_sde_steps_are_rejected(tiny_pipe: BoxEditPipeline) -> None:
    cond = _cond(2)
    with pytest.raises(ValueError, match="sde_steps"):
        sample_flow_sde(
            UNetCropEditor(tiny_pipe.unet), tiny_pipe.scheduler, cond, cond.src.shape, 3,
            sde_steps=[5],
        )  # fmt: skip
