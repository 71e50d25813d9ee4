"""Qwen2.5-VL's vision attention over a whole batch at once on the SDPA path.

Hand-written: transformers' `Qwen2_5_VLVisionAttention` attends each image (and, in the
windowed blocks, each window) with its own `scaled_dot_product_attention` call unless a flash
attention kernel is configured, which the CPU has none of. A pretraining batch of 32 images made
about 120 calls a step, each on a few dozen tokens. `BatchedVisionAttention` stacks the images
and windows of equal length and attends each group in one call.

The attention of one image is the same arithmetic either way (the kernel works on each image
and head apart), so the outputs and the gradients are bit-for-bit the library's: on the default
pretraining batches, 2 threads, every gradient element was `torch.equal`
(`tests/defender/test_vision_attention.py` checks it on a tiny model). It is a class swap on the
model's instances only, applied by `aot.defender.Defender`: saved checkpoints stay plain
Qwen2.5-VL, and eager or flash attention keep the library's own path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLVisionAttention,
    apply_rotary_pos_emb_vision,
)


class BatchedVisionAttention(Qwen2_5_VLVisionAttention):
    """`Qwen2_5_VLVisionAttention` whose SDPA path attends equal-length chunks in one call."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        cu_seqlens: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        max_seqlen: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.config._attn_implementation != "sdpa" or kwargs.get("output_attentions"):
            return super().forward(
                hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs
            )
        tokens = hidden_states.shape[0]
        qkv = self.qkv(hidden_states).reshape(tokens, 3, self.num_heads, -1)
        query, key, value = qkv.permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
        dropout = self.attention_dropout if self.training else 0.0
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        starts = cu_seqlens[:-1].tolist()
        by_length: dict[int, list[int]] = {}
        for start, length in zip(starts, lengths, strict=True):
            if length:
                by_length.setdefault(length, []).append(start)
        out = query.new_empty(query.shape)  # (tokens, heads, head_dim)
        for length, group in by_length.items():
            index = (torch.tensor(group)[:, None] + torch.arange(length)[None]).reshape(-1)
            index = index.to(query.device)
            shape = (len(group), length, self.num_heads, -1)
            # (chunks, heads, length, head_dim)
            q, k, v = (
                s.index_select(0, index).reshape(shape).transpose(1, 2) for s in (query, key, value)
            )
            attended = F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, scale=self.scaling
            )
            flat = attended.transpose(1, 2).reshape(len(group) * length, self.num_heads, -1)
            out = out.index_copy(0, index, flat)
        return self.proj(out.reshape(tokens, -1))


def batch_vision_attention(model: torch.nn.Module) -> int:
    """Swaps every `Qwen2_5_VLVisionAttention` in ``model`` (a peft wrapper too) for
    `BatchedVisionAttention`, in place; returns how many. Other models are left as they are."""
    swapped = 0
    for module in model.modules():
        if type(module) is Qwen2_5_VLVisionAttention:
            module.__class__ = BatchedVisionAttention
            swapped += 1
    return swapped
