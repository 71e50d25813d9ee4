"""Flow-GRPO on a tiny Qwen-Image-Edit (built from configs): edits stay in the box, the first
update is on-policy, and with `lora` only the adapters train and are merged back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from aot.attacker.flow_grpo import STATE_FILE, FlowGRPOTrainer, train_attacker_flow_grpo
from aot.attacker.flow_grpo_config import FlowGRPOConfig
from aot.attacker.flow_sampler import QwenImageEditEditor
from aot.attacker.qwen_edit import (
    QWEN_IMAGE_LORA_TARGETS,
    box_token_mask,
    build_tiny_qwen_image_edit,
    encode_images,
    is_qwen_image_edit,
    run_qwen_edit_pass,
)
from aot.attacker.rollout import build_items
from aot.world import QuestionConfig, WorldConfig, make_questions, sample_scene

LORA = {"r": 4, "lora_alpha": 4, "target_modules": list(QWEN_IMAGE_LORA_TARGETS)}
QUICK = dict(
    prompts_per_step=2,
    group_size=2,
    sampling_steps=3,
    minibatches=1,
    quality_every=0,
    beta_kl=0.0,
    log_kl=True,
    lr=1e-2,
)


@pytest.fixture(scope="module")
def records() -> tuple[pd.DataFrame, dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows, images = [], {}
    for i in range(3):
        scene = sample_scene(rng, WorldConfig(), f"qie_{i}")
        images[scene.scene_id] = scene.render()
        for record in make_questions(scene, rng, QuestionConfig())[:2]:
            rows.append({**record, "graph": json.dumps(scene.to_dict())})
    return pd.DataFrame(rows), images


def _redness(rollout: Any) -> dict[str, np.ndarray]:
    out = []
    for plan, edited in zip(rollout.plans, rollout.edited, strict=True):
        x0, y0, x1, y1 = plan.box
        box = edited[y0:y1, x0:x1].astype(float) / 255
        out.append(float((box[..., 0] - (box[..., 1] + box[..., 2]) / 2).mean()))
    return {"reward": np.array(out)}


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_box_token_mask_marks_the_tokens_under_the_box() -> None:
    # a 32x32 image encoded as is, 8-px tokens: a 4x4 grid; box (8, 0)-(17, 8) covers
    # columns 1-2 of row 0
    mask = box_token_mask([(8, 0, 17, 8)], (32, 32), (32, 32), 8)
    assert mask.shape == (1, 16, 1)
    assert torch.nonzero(mask[0, :, 0]).flatten().tolist() == [1, 2]
    # a 36-px image encoded at 32 px: box coordinates scale with it
    scaled = box_token_mask([(27, 27, 36, 36)], (36, 36), (32, 32), 8)
    assert torch.nonzero(scaled[0, :, 0]).flatten().tolist() == [15]


def test_an_edit_pass_changes_pixels_inside_the_box_only(
    records: tuple[pd.DataFrame, dict[str, Any]],
) -> None:
    pipe = build_tiny_qwen_image_edit(seed=0)
    assert is_qwen_image_edit(pipe)
    _, images = records
    image = torch.from_numpy(np.array(next(iter(images.values())))).permute(2, 0, 1)
    latents, h, w = encode_images(pipe, image[None])
    assert (h, w) == tuple(image.shape[1:])  # 112 px is a multiple of 8: encoded as is
    box = (20, 28, 44, 52)
    out, cond, trace = run_qwen_edit_pass(
        QwenImageEditEditor(pipe.transformer),
        pipe,
        [image, image],
        [box, box],
        ["add a red circle", "remove the object"],
        3,
        0.7,
        torch.Generator().manual_seed(0),
    )
    assert len(trace.log_probs) == 2 and cond.mask is not None and len(cond) == 2
    for edited in out:
        inside = torch.zeros_like(image, dtype=torch.bool)
        inside[:, 28:52, 20:44] = True
        assert torch.equal(edited[~inside], image[~inside])
        assert not torch.equal(edited[inside], image[inside])


def test_lora_trains_only_the_adapters_and_merges_them_back(
    records: tuple[pd.DataFrame, dict[str, Any]],
) -> None:
    """One Flow-GRPO step with `lora`: only adapter weights move (the transformer's own
    weights, the VAE, the text encoder do not), the optimizer holds adapters only, the first
    update is on-policy (ratio 1), the KL reference is the editor with its adapters off, and
    the returned transformer is a plain one whose targeted projections changed."""
    recs, images = records
    pipe = build_tiny_qwen_image_edit(seed=0)
    config = FlowGRPOConfig.from_dict({**QUICK, "lora": LORA})
    items = build_items(recs, images, config.planner)
    frozen = {
        "vae": _params(pipe.vae),
        "text_encoder": _params(pipe.text_encoder),
        "transformer": _params(pipe.transformer),
    }
    trainer = FlowGRPOTrainer(pipe, items, config, _redness, seed=0)
    assert trainer.trainable and all("lora_" in n for n, p in trainer.peft.named_parameters()
                                     if p.requires_grad)  # fmt: skip
    assert {id(p) for g in trainer.opt.param_groups for p in g["params"]} == {
        id(p) for p in trainer.trainable
    }
    before = _params(trainer.peft)
    row = trainer.step()
    assert row["ratio_dev_max"] < 1e-4  # one minibatch recomputes the sampling policy
    assert row["kl"] == pytest.approx(0.0, abs=1e-12)  # B = 0: adapters on == adapters off
    changed = {n for n, p in trainer.peft.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora_" in n for n in changed), changed
    for name, weights in frozen.items():
        if name == "transformer":
            continue
        for key, value in getattr(pipe, name).named_parameters():
            assert torch.equal(value, weights[key]), (name, key)
    rollout = trainer.rollout(items[:1], 2, torch.Generator().manual_seed(1))
    assert trainer.sampling_kl(rollout) > 0  # the adapters moved the policy off the reference
    state = trainer.state()
    assert set(state["unet"]) and all("lora_" in k for k in state["unet"])  # adapters only

    merged = trainer.finish().transformer
    assert merged is pipe.transformer
    assert not any("lora" in k for k in merged.state_dict())
    moved = {
        k for k, v in merged.named_parameters() if not torch.equal(v, frozen["transformer"][k])
    }
    assert moved and all(
        any(k.endswith(f"{t}.weight") for t in QWEN_IMAGE_LORA_TARGETS) for k in moved
    ), moved


def test_lora_config_is_checked() -> None:
    with pytest.raises(ValueError, match="lora"):
        FlowGRPOConfig.from_dict({"lora": {"r": 4}})  # no target_modules
    with pytest.raises(ValueError, match=r"lora\.r"):
        FlowGRPOConfig.from_dict({"lora": {**LORA, "r": 0}})
    with pytest.raises(ValueError, match="lora"):
        FlowGRPOConfig.from_dict({"lora": ["to_q"]})
    assert FlowGRPOConfig.from_dict({"lora": LORA}).lora == LORA


def test_gradient_checkpointing_gives_the_same_lora_step(
    records: tuple[pd.DataFrame, dict[str, Any]],
) -> None:
    """Activations recomputed in the backward pass (non-reentrant, so LoRA adapters inside
    checkpointed blocks get their gradients) give the very same step."""
    recs, images = records
    adapters = []
    for checkpointing in (False, True):
        config = FlowGRPOConfig.from_dict(
            {**QUICK, "log_kl": False, "lora": LORA, "gradient_checkpointing": checkpointing}
        )
        pipe = build_tiny_qwen_image_edit(seed=0)
        trainer = FlowGRPOTrainer(pipe, build_items(recs, images, config.planner), config,
                                  _redness, seed=0)  # fmt: skip
        assert pipe.transformer.gradient_checkpointing is checkpointing
        trainer.step()
        adapters.append({k: v.detach().clone() for k, v in trainer._editor_state().items()})
    assert adapters[0].keys() == adapters[1].keys()
    assert any(v.abs().sum() > 0 for k, v in adapters[0].items() if "lora_B" in k)
    for key, value in adapters[0].items():
        torch.testing.assert_close(adapters[1][key], value, rtol=1e-5, atol=1e-7)


def test_a_resumed_lora_run_continues_like_an_uninterrupted_one(
    records: tuple[pd.DataFrame, dict[str, Any]], tmp_path: Path
) -> None:
    """The resumable state of a LoRA run holds the adapters (not the 20B weights); a run killed
    after step 1 and rerun to step 2 ends with the weights of the straight run."""
    recs, images = records
    params = {**QUICK, "lora": LORA, "save_every": 1, "beta_kl": 0.05}

    def run(steps: int, folder: Path) -> tuple[Any, pd.DataFrame]:
        return train_attacker_flow_grpo(
            build_tiny_qwen_image_edit(seed=0), None, recs, images,
            {**params, "steps": steps}, seed=0, reward_fn=_redness, checkpoint_dir=folder,
        )  # fmt: skip

    straight, log = run(2, tmp_path / "straight")
    run(1, tmp_path / "resumed")
    saved = torch.load(tmp_path / "resumed" / STATE_FILE, weights_only=False)
    assert all("lora_" in k for k in saved["trainer"]["unet"])
    resumed, log2 = run(2, tmp_path / "resumed")
    assert list(log2["step"]) == [1, 2]
    pd.testing.assert_frame_equal(log[["reward_mean", "kl"]], log2[["reward_mean", "kl"]])
    for (k, a), b in zip(
        straight.transformer.state_dict().items(),
        resumed.transformer.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), k


def test_a_bfloat16_editor_keeps_the_sde_in_float32(
    records: tuple[pd.DataFrame, dict[str, Any]],
) -> None:
    """Paper-scale weights are bf16; the transformer runs in bf16 while states, log-probs and
    ratios stay float32, and the LoRA adapters train in float32."""
    recs, images = records
    pipe = build_tiny_qwen_image_edit(seed=0).to(torch.bfloat16)
    config = FlowGRPOConfig.from_dict({**QUICK, "lora": LORA, "beta_kl": 0.05})
    trainer = FlowGRPOTrainer(pipe, build_items(recs, images, config.planner), config, _redness)
    assert {p.dtype for p in trainer.trainable} == {torch.float32}
    row = trainer.step()
    assert row["ratio_dev_max"] < 1e-4 and np.isfinite(row["policy_loss"])
    rollout = trainer.rollout(trainer.items[:1], 2, torch.Generator().manual_seed(0))
    assert rollout.passes[0].trace.log_probs[0].dtype == torch.float32
    assert trainer.finish().transformer.dtype == torch.bfloat16
