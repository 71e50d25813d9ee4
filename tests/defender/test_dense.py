"""The dense grounding loss: exact values on hand-made tokens, and which loss kinds exist."""

import math

import pytest
import torch

from aot.defender.dense import DENSE_LABELS, dense_grounding_loss
from aot.defender.sft import DefenderSFTConfig
from aot.world import COLORS

N_COLOURS = len(COLORS)
N_LABELS = len(DENSE_LABELS)


def _one_column_per_label() -> torch.Tensor:
    return torch.arange(N_LABELS)


def test_softmax_loss_is_the_two_cross_entropies_with_a_none_class() -> None:
    labels = _one_column_per_label()
    logits = torch.zeros(2, N_LABELS)
    targets = torch.zeros(2, N_LABELS)
    targets[0, 0] = targets[0, N_COLOURS] = 1.0  # token 0: red circle; token 1: background
    # All-zero logits: each block is uniform over its labels plus "none".
    expected = math.log(N_COLOURS + 1) + math.log(N_LABELS - N_COLOURS + 1)
    loss = dense_grounding_loss(logits, targets, labels, "softmax")
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_softmax_loss_falls_when_the_right_shape_is_named() -> None:
    labels = _one_column_per_label()
    targets = torch.zeros(1, N_LABELS)
    targets[0, 1] = targets[0, N_COLOURS + 2] = 1.0
    right, wrong = torch.zeros(1, N_LABELS), torch.zeros(1, N_LABELS)
    right[0, N_COLOURS + 2] = 5.0
    wrong[0, N_COLOURS + 3] = 5.0
    assert (
        dense_grounding_loss(right, targets, labels)
        < dense_grounding_loss(torch.zeros(1, N_LABELS), targets, labels)
        < dense_grounding_loss(wrong, targets, labels)
    )


def test_a_label_read_by_two_columns_pools_them() -> None:
    """Two spellings of one word (`red`, ` red`) act as one label: logsumexp of their logits."""
    labels = torch.cat([torch.tensor([0]), _one_column_per_label()])  # label 0 twice
    logits = torch.zeros(1, N_LABELS + 1)
    targets = torch.zeros(1, N_LABELS)
    targets[0, 0] = 1.0
    pooled = dense_grounding_loss(logits, targets, labels)
    colour_ce = -math.log(2 / (N_COLOURS + 2))  # label 0 has logit log 2 among N+1 ones
    shape_ce = math.log(N_LABELS - N_COLOURS + 1)
    assert pooled.item() == pytest.approx(colour_ce + shape_ce, rel=1e-6)


def test_bce_loss_matches_torch() -> None:
    labels = _one_column_per_label()
    logits = torch.randn(3, N_LABELS, generator=torch.Generator().manual_seed(0))
    targets = (torch.rand(3, N_LABELS, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(dense_grounding_loss(logits, targets, labels, "bce"), expected)


def test_an_unknown_dense_loss_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="dense_loss must be one of"):
        DefenderSFTConfig.from_dict({"dense_loss": "focal"}, prefix="pretrain.trainer")
    with pytest.raises(ValueError, match="dense loss must be one of"):
        dense_grounding_loss(
            torch.zeros(1, N_LABELS), torch.zeros(1, N_LABELS), torch.arange(N_LABELS), "l2"
        )
