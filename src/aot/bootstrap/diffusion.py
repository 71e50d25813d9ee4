"""Diffusion inpainting filler (the paper's "Image Extender" / "Image Filler") and a tiny build.

torch and diffusers are imported lazily: the procedural pipeline never pays their import time.
The pipeline is loaded from a LOCAL folder only (``use_safetensors=True``, no safety checker).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
DEFAULT_MARGIN_PROMPT = "simple flat coloured shapes on a plain textured background"
DEFAULT_NEGATIVE_PROMPT = "text, watermark, frame, border"


def _check_pipeline_folder(path: Path) -> None:
    """FileNotFoundError naming the path, before diffusers gives a less readable hub error."""
    if not path.is_dir():
        raise FileNotFoundError(f"inpainting pipeline folder '{path}' does not exist")
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(
            f"inpainting pipeline folder '{path}' has no model_index.json; "
            "save one with pipeline.save_pretrained(path) or build_tiny_inpaint_pipeline(path)"
        )


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, int(math.ceil(value / multiple)) * multiple)


class DiffusersFiller:
    """Outpaints margins and inpaints boxes with a local diffusers inpainting pipeline.

    The pipeline needs sides divisible by its latent stride, so images are padded (edge-replicated,
    masked as "to fill") or, with ``resolution``, resized to that longer side for the model and
    back afterwards. With ``paste_back`` (default) every pixel outside the mask is restored
    exactly after decoding: the VAE round trip would otherwise blur the known region, including
    the target objects the composition check protects.
    """

    exact = False

    def __init__(
        self,
        path: str | os.PathLike,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        device: str | None = None,
        margin_prompt: str = DEFAULT_MARGIN_PROMPT,
        negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
        resolution: int | None = None,
        paste_back: bool = True,
    ) -> None:
        path = Path(path)
        _check_pipeline_folder(path)
        import torch
        from diffusers import AutoPipelineForInpainting

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.pipe = AutoPipelineForInpainting.from_pretrained(
            path, safety_checker=None, requires_safety_checker=False, use_safetensors=True
        ).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.margin_prompt = margin_prompt
        self.negative_prompt = negative_prompt
        self.resolution = resolution
        self.paste_back = paste_back
        self.multiple = self._latent_multiple()
        logger.info(
            "DiffusersFiller: %s on %s (sides padded to x%d)", path, self.device, self.multiple
        )

    def _latent_multiple(self) -> int:
        """Pixel stride the model needs: VAE factor times the UNet's downsampling, if any."""
        factor = int(getattr(self.pipe, "vae_scale_factor", 8))
        unet = getattr(self.pipe, "unet", None)
        blocks = len(unet.config.block_out_channels) if unet is not None else 2
        return factor * 2 ** (blocks - 1)

    def fill_margins(
        self, canvas: Image.Image, known_mask: np.ndarray, rng: np.random.Generator
    ) -> Image.Image:
        return self._inpaint(canvas, ~np.asarray(known_mask, bool), self.margin_prompt, rng)

    def fill_box(
        self, image: Image.Image, box: Box, prompt: str, rng: np.random.Generator
    ) -> Image.Image:
        mask = np.zeros((image.height, image.width), dtype=bool)
        x0, y0, x1, y1 = (int(v) for v in box)
        mask[y0:y1, x0:x1] = True
        return self._inpaint(image, mask, prompt, rng)

    def _inpaint(
        self, image: Image.Image, mask: np.ndarray, prompt: str, rng: np.random.Generator
    ) -> Image.Image:
        import torch

        src = np.asarray(image.convert("RGB"))
        work, work_mask, undo = self._to_work_size(src, mask)
        generator = torch.Generator("cpu").manual_seed(int(rng.integers(0, 2**31 - 1)))
        result = self.pipe(
            prompt=prompt,
            negative_prompt=self.negative_prompt,
            image=Image.fromarray(work, "RGB"),
            mask_image=Image.fromarray(work_mask.astype(np.uint8) * 255, "L"),
            height=work.shape[0],
            width=work.shape[1],
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=generator,
        ).images[0]
        out = undo(np.asarray(result.convert("RGB")))
        if self.paste_back:
            out = out.copy()
            out[~mask] = src[~mask]
        return Image.fromarray(out, "RGB")

    def _to_work_size(
        self, src: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, Any]:
        """Image and mask at a size the model accepts, plus the function mapping back."""
        h, w = src.shape[:2]
        if self.resolution:
            scale = self.resolution / max(h, w)
            tw, th = _round_up(w * scale, self.multiple), _round_up(h * scale, self.multiple)
            work = np.asarray(Image.fromarray(src).resize((tw, th), Image.Resampling.BICUBIC))
            big = Image.fromarray(mask.astype(np.uint8) * 255).resize((tw, th))
            work_mask = np.asarray(big) > 127

            def undo(out: np.ndarray) -> np.ndarray:
                return np.asarray(Image.fromarray(out).resize((w, h), Image.Resampling.BICUBIC))

            return work, work_mask, undo
        th, tw = _round_up(h, self.multiple), _round_up(w, self.multiple)
        work = np.pad(src, ((0, th - h), (0, tw - w), (0, 0)), mode="edge")
        work_mask = np.pad(mask, ((0, th - h), (0, tw - w)), constant_values=True)
        return work, work_mask, lambda out: out[:h, :w]


def build_tiny_inpaint_pipeline(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a random-weight ``StableDiffusionInpaintPipeline`` (about 1 M parameters) to ``path``.

    For smoke tests and CI: 9-channel UNet, 2-level VAE, 2-layer CLIP text encoder and a
    byte-level CLIPTokenizer built in memory, so nothing is ever downloaded. Output is noise.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )
    from tokenizers import pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.model_max_length = 16
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=9,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    return path
