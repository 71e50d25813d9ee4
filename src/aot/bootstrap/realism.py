"""Image-statistics realism rules for an extended image: margins versus the pasted source.

No learned judge is available offline, so realism is a set of sanity rules that catch the
failures a filler actually produces: wrong tone (mean), washed-out or noisy margins (std, colour
distribution), blank or blacked-out areas (flat blocks the source does not have) and a visible paste
border (seam). Every rule is relative to the source, so a plain-background scene may have plain
margins but a textured one may not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from aot.bootstrap.checks import CheckConfig

Box = tuple[int, int, int, int]
_BLOCK = 8
_FLAT_STD = 1.0


def colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest per-channel 1-D Wasserstein distance (grey levels) between two (N, 3) pixel sets.

    Unlike a binned histogram it degrades smoothly with a small tone drift, yet a margin of a
    different palette (or of noise) is far away.
    """
    a, b = np.asarray(a).astype(np.int64), np.asarray(b).astype(np.int64)
    out = 0.0
    for c in range(3):
        cdf_a = np.cumsum(np.bincount(a[:, c], minlength=256)) / len(a)
        cdf_b = np.cumsum(np.bincount(b[:, c], minlength=256)) / len(b)
        out = max(out, float(np.abs(cdf_a - cdf_b).sum()))
    return out


def _blocks(arr: np.ndarray) -> np.ndarray:
    """(rows, cols, 8, 8, ...) view of the whole 8x8 blocks of an image or mask."""
    h, w = arr.shape[0] // _BLOCK * _BLOCK, arr.shape[1] // _BLOCK * _BLOCK
    cut = arr[:h, :w]
    shaped = cut.reshape(h // _BLOCK, _BLOCK, w // _BLOCK, _BLOCK, *arr.shape[2:])
    return np.moveaxis(shaped, 2, 1)


def block_stds(arr: np.ndarray) -> np.ndarray:
    """(rows, cols) std of each whole 8x8 block, the largest over channels."""
    stds = _blocks(arr.astype(np.float32)).std(axis=(2, 3))
    if stds.ndim == 3:
        stds = stds.max(-1)  # per channel: a flat coloured block still has 3 different values
    return stds


def flat_fraction(arr: np.ndarray, mask: np.ndarray, stds: np.ndarray | None = None) -> float:
    """Fraction of 8x8 blocks lying fully in ``mask`` whose every channel's std is below 1.

    ``stds``: `block_stds(arr)`, when the caller has it already (it asks for two masks)."""
    inside = _blocks(mask).all(axis=(2, 3))
    if not inside.any():
        return 0.0
    if stds is None:
        stds = block_stds(arr)
    return float((stds[inside] < _FLAT_STD).mean())


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(-1)


def seam_strength(arr: np.ndarray, box: Box) -> tuple[float, float]:
    """(median step across the paste border, median step between neighbours in the source).

    Only border sides that face a margin count (a side on the canvas edge has no seam).
    """
    h, w = arr.shape[:2]
    x0, y0, x1, y1 = box
    steps = []
    if x0 > 0:
        steps.append(_max_abs_diff(arr[y0:y1, x0 - 1], arr[y0:y1, x0]))
    if x1 < w:
        steps.append(_max_abs_diff(arr[y0:y1, x1 - 1], arr[y0:y1, x1]))
    if y0 > 0:
        steps.append(_max_abs_diff(arr[y0 - 1, x0:x1], arr[y0, x0:x1]))
    if y1 < h:
        steps.append(_max_abs_diff(arr[y1 - 1, x0:x1], arr[y1, x0:x1]))
    if not steps:
        return 0.0, 0.0
    src = arr[y0:y1, x0:x1]
    typical = np.concatenate(
        [
            _max_abs_diff(src[:, 1:], src[:, :-1]).ravel(),
            _max_abs_diff(src[1:], src[:-1]).ravel(),
        ]
    )
    return float(np.median(np.concatenate(steps))), float(np.median(typical))


def realism_failures(
    arr: np.ndarray, known_mask: np.ndarray, box: Box, config: CheckConfig
) -> list[str]:
    """Names and values of every realism rule the image breaks (empty when it passes)."""
    margins = ~known_mask
    if not margins.any():
        return []
    src, mar = arr[known_mask], arr[margins]
    problems = []
    mean_gap = float(np.abs(src.mean(0) - mar.mean(0)).max())  # numpy means in float64
    if mean_gap > config.mean_tol:
        problems.append(f"mean differs by {mean_gap:.1f} > {config.mean_tol}")
    s_std, m_std = float(src.std()), float(mar.std())
    if (m_std + 8) / (s_std + 8) > config.std_ratio:
        problems.append(f"margins are noisy: std {m_std:.1f} vs source {s_std:.1f}")
    distance = colour_distance(src, mar)
    if distance > config.colour_max:
        problems.append(f"colour distribution distance {distance:.1f} > {config.colour_max}")
    stds = block_stds(arr)
    flat_gap = flat_fraction(arr, margins, stds) - flat_fraction(arr, known_mask, stds)
    if flat_gap > config.flat_excess:
        problems.append(f"flat blocks exceed the source's by {flat_gap:.2f}")
    seam, typical = seam_strength(arr, box)
    if seam > config.seam_factor * typical + config.seam_floor:
        problems.append(f"seam {seam:.1f} vs typical step {typical:.1f}")
    return problems
