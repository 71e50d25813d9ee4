"""Builds a tiny Qwen2.5-VL (random weights, the real architecture and processor) from a config."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from aot.defender.model import Defender
from aot.defender.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer

PATCH = 14
MERGE = 2
MROPE_LAYOUTS = ("sections", "interleaved")


@dataclass(frozen=True)
class TinyDefenderConfig:
    """Sizes of the tiny Defender. Every field is a Kedro parameter (`defender.tiny.*`)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_hidden_size: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    vocab_size: int = 512
    min_pixels: int = 56 * 56
    max_pixels: int = 224 * 224
    # The LM's rotary base. With Qwen's "sections" layout width gets the lowest frequencies: at
    # 1e4 and a 32-wide head they turn by under 0.02 rad across a 6-token row.
    rope_theta: float = 1e4
    # "sections": Qwen2.5-VL's [time, height, width] blocks, width the slowest frequencies;
    # "interleaved": time, height, width take turns along the frequencies (what Qwen3-VL does),
    # written as a longer `mrope_section` that stock Qwen2.5-VL code reads the same way.
    mrope_layout: str = "sections"

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "mrope_layout":
                if value not in MROPE_LAYOUTS:
                    raise ValueError(
                        f"defender.tiny.mrope_layout must be one of {MROPE_LAYOUTS}, got {value!r}"
                    )
                continue
            if f.name == "rope_theta":
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 1:
                    raise ValueError(
                        f"defender.tiny.rope_theta must be a number above 1, got {value!r}"
                    )
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(
                    f"defender.tiny.{f.name} must be a positive integer, got {value!r}"
                )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                "defender.tiny.hidden_size must be divisible by defender.tiny.num_heads"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                "defender.tiny.num_heads must be divisible by defender.tiny.num_kv_heads"
            )
        if (self.hidden_size // self.num_heads) % 8:
            raise ValueError(
                "defender.tiny: head size (hidden_size / num_heads) must be a multiple of 8"
            )
        if self.vision_hidden_size % self.vision_heads:
            raise ValueError("defender.tiny.vision_hidden_size must be divisible by vision_heads")
        if self.min_pixels > self.max_pixels:
            raise ValueError("defender.tiny.min_pixels must not exceed defender.tiny.max_pixels")

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> TinyDefenderConfig:
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"defender.tiny: unknown key(s) {unknown}; known: {sorted(known)}")
        config = cls(**params)
        config.validate()
        return config

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


def _mrope_section(head_dim: int, layout: str = "sections") -> list[int]:
    """How head_dim/2 rotary frequencies (fastest first) go to time, height and width.

    Qwen2.5-VL reads chunk i of `mrope_section` from axis i % 3. "sections": three chunks in
    Qwen's 1/4, 3/8, 3/8 proportions (G4), so width gets the slowest frequencies. "interleaved":
    chunks of one frequency in turn (the spare slowest ones to width), so every axis gets fast
    and slow ones; the chunk count stays a multiple of 3 so code that splits the doubled list
    agrees.
    """
    half = head_dim // 2
    if layout == "interleaved":
        triples = half // 3
        return [1] * (3 * triples - 1) + [1 + half - 3 * triples]
    t, h = half // 4, 3 * half // 8
    return [t, h, half - t - h]


def build_processor(tokenizer: Any, config: TinyDefenderConfig) -> Qwen2_5_VLProcessor:
    size = {"shortest_edge": config.min_pixels, "longest_edge": config.max_pixels}
    kwargs = dict(size=size, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2)
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**kwargs),
        video_processor=Qwen2VLVideoProcessor(**kwargs),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer: Any, config: TinyDefenderConfig) -> Qwen2_5_VLForConditionalGeneration:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = config.hidden_size // config.num_heads
    model_config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_kv_heads,
            max_position_embeddings=4096,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": float(config.rope_theta),
                "mrope_section": _mrope_section(head_dim, config.mrope_layout),
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=config.vision_depth,
            hidden_size=config.vision_hidden_size,
            intermediate_size=2 * config.vision_hidden_size,
            num_heads=config.vision_heads,
            out_hidden_size=config.hidden_size,
            patch_size=PATCH,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[config.vision_depth - 1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    model = Qwen2_5_VLForConditionalGeneration(model_config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model


def build_tiny_defender(
    config: TinyDefenderConfig, corpus: Iterable[str], seed: int = 0
) -> Defender:
    """A random-weight Qwen2.5-VL with a locally trained tokenizer and the real processor."""
    config.validate()
    tokenizer = build_tokenizer(corpus, vocab_size=config.vocab_size)
    processor = build_processor(tokenizer, config)
    torch.manual_seed(seed)
    model = build_model(tokenizer, config).eval()
    return Defender(model=model, processor=processor)
