"""Qwen-Image-Edit as the Attacker's editor in Flow-GRPO (the paper's Attacker), and a tiny build.

``QwenImageEditPipeline.__call__`` cannot be used for RL: it returns no log-probs and it resizes
every condition image to about 1024x1024 whatever the requested size (stack.md G7). Flow-GRPO
therefore drives the pipeline's parts itself, as the pipeline's denoising loop does (diffusers
0.42): the frozen VAE encodes the image at its own size (rounded down to a multiple of
``vae_scale_factor * 2``), the frozen text encoder (Qwen2.5-VL) encodes the instruction with the
image, and the transformer (``QwenImageEditEditor``, the trainable part, LoRA at paper scale) is
sampled with the Flow-GRPO SDE of ``aot.attacker.flow_sampler`` on the packed latents.

The edit stays in the planner's box, as the box editor's does: latent tokens outside the box are
held at the (noised) source latents while sampling, log-probs average over the box tokens only,
and the decoded pixels are pasted back inside the box alone, so every pixel outside the box is
the source's byte for byte (the integrity gate then measures the edit, not the VAE round trip).

``build_tiny_qwen_image_edit`` builds a random-weight ``QwenImageEditPipeline`` from configs
(tiny transformer, tiny VAE and the tiny Qwen2.5-VL of ``aot.defender`` as text encoder) for tests
and CPU demos; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from aot.attacker.flow_sampler import FlowEditor, QwenEditConditioning, sample_flow_sde
from aot.attacker.sde import SampleTrace

Box = tuple[int, int, int, int]

# The attention projections of QwenImageTransformer2DModel's joint blocks (image and text
# streams): the usual LoRA targets for Qwen-Image(-Edit).
QWEN_IMAGE_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)


def is_qwen_image_edit(pipe: Any) -> bool:
    """Whether ``pipe`` is a ``QwenImageEditPipeline`` (or a subclass)."""
    from diffusers import QwenImageEditPipeline

    return isinstance(pipe, QwenImageEditPipeline)


def _multiple(pipe: Any) -> int:
    return int(pipe.vae_scale_factor) * 2


def model_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """The image size the VAE sees: each side rounded down to ``multiple`` (at least one)."""
    return max(multiple, height // multiple * multiple), max(multiple, width // multiple * multiple)


def _device(pipe: Any) -> torch.device:
    return next(pipe.transformer.parameters()).device


@torch.no_grad()
def encode_images(pipe: Any, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Packed, normalised VAE latents (B, L, 4C, float32) of uint8 images (B, 3, H, W), and the
    size (H', W') they were encoded at."""
    height, width = model_size(images.shape[-2], images.shape[-1], _multiple(pipe))
    x = images.float() / 127.5 - 1
    if (height, width) != tuple(images.shape[-2:]):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True)
    x = x.unsqueeze(2).to(_device(pipe), pipe.vae.dtype)
    latents = pipe._encode_vae_image(x, generator=None)  # (B, C, 1, h, w), normalised
    b, c, _, h, w = latents.shape
    # float32 whatever the VAE's dtype: the SDE's log-probs and ratios need the precision
    return pipe._pack_latents(latents, b, c, h, w).float(), height, width


@torch.no_grad()
def decode_latents(pipe: Any, packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Images (B, 3, H', W') in [-1, 1] from packed normalised latents (the pipeline's decode)."""
    latents = pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)
    latents = latents.to(pipe.vae.dtype)
    c = pipe.vae.config.z_dim
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, c, 1, 1, 1).to(latents)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, c, 1, 1, 1).to(latents)
    image = pipe.vae.decode(latents * std + mean, return_dict=False)[0][:, :, 0]
    return image.float().clamp(-1, 1)


def box_token_mask(
    boxes: Sequence[Box], size: tuple[int, int], model: tuple[int, int], multiple: int
) -> torch.Tensor:
    """(B, L, 1) mask of the packed latent tokens whose pixels overlap each box.

    ``size`` is the image's (H, W), ``model`` the (H', W') it was encoded at; a packed token
    covers ``multiple`` x ``multiple`` pixels of the encoded image.
    """
    (h, w), (mh, mw) = size, model
    rows, cols = mh // multiple, mw // multiple
    masks = []
    for x0, y0, x1, y1 in boxes:
        ys = torch.arange(rows + 1, dtype=torch.float64) * multiple * h / mh
        xs = torch.arange(cols + 1, dtype=torch.float64) * multiple * w / mw
        r = (ys[:-1] < y1) & (ys[1:] > y0)
        c = (xs[:-1] < x1) & (xs[1:] > x0)
        masks.append((r[:, None] & c[None, :]).reshape(-1, 1))
    return torch.stack(masks).float()


@torch.no_grad()
def encode_instructions(
    pipe: Any, prompts: Sequence[str], images: Sequence[Image.Image]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The frozen text encoder's embeddings (B, T, D) and mask of each (instruction, image)."""
    embeds, mask = pipe.encode_prompt(list(prompts), image=list(images), device=_device(pipe))
    return embeds, mask


def timestep_kwargs(pipe: Any, steps: int, seq_len: int) -> dict[str, Any]:
    """The pipeline's schedule: sigmas 1 .. 1/steps, shifted by ``mu`` for the image's token
    count when the scheduler uses dynamic shifting (Qwen-Image's does)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_shift

    kwargs: dict[str, Any] = {"sigmas": np.linspace(1.0, 1 / steps, steps).tolist()}
    config = pipe.scheduler.config
    if config.get("use_dynamic_shifting", False):
        kwargs["mu"] = calculate_shift(
            seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
    return kwargs


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def run_qwen_edit_pass(
    editor: FlowEditor,
    pipe: Any,
    images: Sequence[torch.Tensor],
    boxes: Sequence[Box],
    prompts: Sequence[str],
    steps: int,
    noise_level: float,
    generator: torch.Generator,
    reference: FlowEditor | None = None,
) -> tuple[list[torch.Tensor], QwenEditConditioning, SampleTrace]:
    """One batched Qwen-Image-Edit pass over same-size uint8 images (3, H, W): the edited images
    (changed inside each box only), the conditioning and the SDE trace (see the module doc)."""
    batch = torch.stack([torch.as_tensor(im) for im in images])
    h, w = batch.shape[-2:]
    device = _device(pipe)
    latents, mh, mw = encode_images(pipe, batch)
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy(), "RGB") for im in batch]
    embeds, text_mask = encode_instructions(pipe, prompts, pil)
    grid = (1, mh // _multiple(pipe), mw // _multiple(pipe))
    mask = box_token_mask(boxes, (h, w), (mh, mw), _multiple(pipe)).to(device, latents.dtype)
    cond = QwenEditConditioning(latents, embeds, text_mask, [[grid, grid]] * len(batch), mask)
    sample, trace = sample_flow_sde(
        editor,
        pipe.scheduler,
        cond,
        latents.shape,
        steps,
        noise_level,
        generator,
        mask=mask,
        known=latents,
        reference=reference,
        device=device,
        dtype=latents.dtype,
        set_timesteps_kwargs=timestep_kwargs(pipe, steps, latents.shape[1]),
    )
    decoded = decode_latents(pipe, sample, mh, mw)
    if (mh, mw) != (h, w):
        decoded = F.interpolate(decoded, size=(h, w), mode="bilinear", antialias=True)
    decoded = _to_uint8(decoded.cpu())
    out = []
    for image, edit, (x0, y0, x1, y1) in zip(batch, decoded, boxes, strict=True):
        pasted = image.clone()
        pasted[:, y0:y1, x0:x1] = edit[:, y0:y1, x0:x1]
        out.append(pasted)
    return out, cond, trace


# ------------------------------------------------------------------------------ tiny build

TINY_CORPUS = (
    "add a red circle",
    "replace it with a blue star",
    "remove the object",
    "Describe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image.",
)


def build_tiny_qwen_image_edit(seed: int = 0, corpus: Iterable[str] = TINY_CORPUS) -> Any:
    """A random-weight ``QwenImageEditPipeline`` built from configs (never downloaded).

    Transformer: 1 joint block, 2 heads of 16; VAE: ``AutoencoderKLQwenImage`` with 4 latent
    channels and a 4x spatial downsampling (so images are multiples of 8 px); text encoder and
    processor: the tiny Qwen2.5-VL of ``aot.defender`` (hidden 32). The scheduler has
    Qwen-Image's dynamic shifting. A few seconds to build on one CPU thread.
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageTransformer2DModel,
    )

    from aot.defender import TinyDefenderConfig, build_tiny_defender

    text = TinyDefenderConfig(
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=64,
        vision_hidden_size=16,
        vision_depth=1,
        vision_heads=2,
        vocab_size=300,
    )
    encoder = build_tiny_defender(text, list(corpus), seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=text.hidden_size,
            axes_dims_rope=(8, 4, 4),
        )
        vae = AutoencoderKLQwenImage(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 2, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    pipe = QwenImageEditPipeline(
        scheduler=scheduler,
        vae=vae.eval(),
        text_encoder=encoder.model.eval(),
        tokenizer=encoder.processor.tokenizer,
        processor=encoder.processor,
        transformer=transformer.eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
