"""Dense per-token supervision of the vision tower from the scene graph.

The world knows exactly which colour and shape cover every 28x28 region that one merged
Qwen2.5-VL image token sees. The merged tokens, read out through the LM's own tied output
embedding, must name them (multi-label; see `aot.defender.sft.DenseSFTTrainer`). That gives the
vision tower an exact, cheap learning signal the answer tokens alone do not (the probe in
exp-defender.md stayed at chance for 18k steps with answer-only loss), and adds no parameter, so
the saved Defender stays a plain Qwen2.5-VL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from aot.world import COLORS, SHAPES, Scene

TOKEN_PIXELS = 28  # 14-px patches merged 2x2
DENSE_LABELS: tuple[str, ...] = tuple(f"colour:{c}" for c in COLORS) + tuple(
    f"shape:{s}" for s in SHAPES
)


def dense_targets(scene: Scene, min_pixels: int = 24) -> np.ndarray:
    """(tokens, labels) multi-hot: which colours and shapes cover >= `min_pixels` of each region."""
    rows, cols = scene.height // TOKEN_PIXELS, scene.width // TOKEN_PIXELS
    targets = np.zeros((rows * cols, len(DENSE_LABELS)), dtype=np.float32)
    colour_index = {c: i for i, c in enumerate(COLORS)}
    shape_index = {s: len(COLORS) + i for i, s in enumerate(SHAPES)}
    for obj in scene.objects:
        mask = scene.object_mask(obj.object_id)[: rows * TOKEN_PIXELS, : cols * TOKEN_PIXELS]
        per_token = (
            mask.reshape(rows, TOKEN_PIXELS, cols, TOKEN_PIXELS).sum(axis=(1, 3)).reshape(-1)
        )
        hit = per_token >= min_pixels
        targets[hit, colour_index[obj.color]] = 1.0
        targets[hit, shape_index[obj.shape]] = 1.0
    return targets


class VisionTap:
    """Captures the merged image tokens the vision tower hands to the LM, in image order."""

    def __init__(self, model: nn.Module) -> None:
        self.tokens: torch.Tensor | None = None
        self._handle = model.model.visual.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Sequence, output: object) -> None:
        self.tokens = output.pooler_output

    def remove(self) -> None:
        self._handle.remove()
