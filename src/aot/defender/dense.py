"""Dense per-token supervision of the vision tower from the scene graph.

The world knows exactly which colour and shape cover every 28x28 region that one merged
Qwen2.5-VL image token sees. The merged tokens, read out through the LM's own tied output
embedding, must name them (multi-label; see `aot.defender.sft.DenseSFTTrainer`). That gives the
vision tower an exact, cheap learning signal the answer tokens alone do not (the probe in
exp-defender.md stayed at chance for 18k steps with answer-only loss), and adds no parameter, so
the saved Defender stays a plain Qwen2.5-VL.

Question grounding (`question_targets`) supervises the step after perception: the question
comes before the image in every prompt, so each image token can see it, and after one LM layer
each must say whether it holds what the question asks about. A linear head reads that out and
is dropped after training. With it the tiny Defender learned attribute questions (0.55 -> 0.99
in the pipeline) and, in the fast probe only, existence and counting
(benchmarks/results/defender_grounding.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from aot.world import COLORS, SHAPES, Scene
from aot.world.questions import UndefinedAnswer, target_boxes

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


QUESTION_LABELS: tuple[str, ...] = ("none", "target", "reference")


def question_targets(scene: Scene, spec: dict[str, Any] | str) -> np.ndarray | None:
    """(tokens,) labels: which image tokens hold what the question asks about.

    1 ("target") marks the objects a question is about (the attribute's object, every object a
    count or existence question matches, a spatial question's `a`), 2 ("reference") a spatial
    question's `b`, 0 the rest. None when the spec has no defined answer on this scene. Each
    object sits inside one token in the grid world (`world.grid: 28`); an object spanning
    several tokens marks the token under its centre.
    """
    spec = json.loads(spec) if isinstance(spec, str) else spec
    rows, cols = scene.height // TOKEN_PIXELS, scene.width // TOKEN_PIXELS
    labels = np.zeros(rows * cols, dtype=np.int64)
    try:
        boxes = target_boxes(scene, spec)  # spatial: [a, b]
    except (UndefinedAnswer, KeyError):
        return None
    spatial = spec["family"] == "spatial"
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        row = min(((y0 + y1) // 2) // TOKEN_PIXELS, rows - 1)
        col = min(((x0 + x1) // 2) // TOKEN_PIXELS, cols - 1)
        labels[row * cols + col] = 1 + k if spatial else 1
    return labels


class LayerTap:
    """Captures the hidden states one LM decoder layer outputs (the question-grounding loss)."""

    def __init__(self, layer: nn.Module) -> None:
        self.hidden: torch.Tensor | None = None
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Sequence, output: object) -> None:
        self.hidden = output[0] if isinstance(output, tuple) else output

    def remove(self) -> None:
        self._handle.remove()


class VisionTap:
    """Captures the merged image tokens the vision tower hands to the LM, in image order."""

    def __init__(self, model: nn.Module) -> None:
        self.tokens: torch.Tensor | None = None
        self._handle = model.model.visual.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Sequence, output: object) -> None:
        self.tokens = output.pooler_output

    def capture(self, tokens: torch.Tensor) -> None:
        """Takes the tokens from elsewhere: cached image features skip the tower and its hook
        (`aot.defender.image_cache.cached_image_features`'s ``on_features``)."""
        self.tokens = tokens

    def remove(self) -> None:
        self._handle.remove()


DENSE_LOSSES = ("softmax", "bce")


def dense_grounding_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_of_column: torch.Tensor,
    kind: str = "softmax",
) -> torch.Tensor:
    """The dense grounding loss over readout `logits` (tokens, columns); `targets` (tokens, labels).

    `bce`: independent yes/no per column. Most tokens are background, so every shape column is
    almost always 0 and BCE mostly teaches "nothing here": the vision probe reached 60% per-token
    shape accuracy in 600 steps with it. `softmax` (default): one cross-entropy over the colours
    plus "none" and one over the shapes plus "none" per token, each label's logit the logsumexp
    of its columns; 82% in the same 600 steps (benchmarks/probe_dense_vision.py).
    """
    if kind not in DENSE_LOSSES:
        raise ValueError(f"dense loss must be one of {DENSE_LOSSES}, got {kind!r}")
    label_of_column = label_of_column.to(logits.device)
    targets = targets.to(logits.device)
    if kind == "bce":
        wanted = targets[:, label_of_column]
        return nn.functional.binary_cross_entropy_with_logits(logits, wanted)
    n_labels = targets.shape[1]
    per_label = torch.stack(
        [logits[:, label_of_column == k].logsumexp(dim=1) for k in range(n_labels)], dim=1
    )
    n_colours = len(COLORS)
    loss = logits.new_zeros(())
    for block in (slice(0, n_colours), slice(n_colours, n_labels)):
        block_logits, block_targets = per_label[:, block], targets[:, block]
        none = block_logits.new_zeros(len(block_logits), 1)  # "nothing of this kind here"
        wanted = torch.where(
            block_targets.sum(dim=1) > 0,
            block_targets.argmax(dim=1),
            torch.full_like(block_targets[:, 0], block_targets.shape[1], dtype=torch.long),
        )
        loss = loss + nn.functional.cross_entropy(torch.cat([block_logits, none], dim=1), wanted)
    return loss
