"""Supervised cold start of the Attacker with the conditional flow-matching loss.

The optimiser loop is ours (small enough that a trainer framework would add more than it saves);
the pieces are diffusers': ``get_constant_schedule_with_warmup`` and ``EMAModel`` (whose built-in
``(1+t)/(10+t)`` decay warm-up keeps the EMA useful in runs of a few hundred steps).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from diffusers.optimization import get_constant_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from aot.attacker.editing import flow_matching_loss
from aot.attacker.pairs import EditPairs, make_edit_pairs
from aot.attacker.pipeline import BoxEditPipeline
from aot.attacker.train_state import TrainState
from aot.config import reject_unknown
from aot.world import WorldConfig

logger = logging.getLogger(__name__)

Checkpoint = Callable[[float, int, BoxEditPipeline], None]
SAVE_EVERY_S = 60.0  # training seconds between resumable-state saves


@dataclass(frozen=True)
class ColdStartConfig:
    """Kedro ``attacker.cold_start.*``. ``pair_weight`` is the probability that a batch item is
    drawn from the given (AOT-SFT) pairs rather than the procedural ones: an upweighting, since
    the given pairs are few. ``time_budget_s`` stops training early (data generation excluded)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 50
    ema_decay: float = 0.999
    n_procedural_pairs: int = 20000
    pair_weight: float = 0.25
    remove_fraction: float = 0.2
    edits_per_scene: int = 4
    p_uncond: float = 0.1
    w_out: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    time_budget_s: float | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; the ValueError names the field."""
        for name in ("steps", "batch_size", "n_procedural_pairs", "edits_per_scene", "threads"):
            _check_number(name, getattr(self, name), 1, math.inf, integer=True)
        _check_number("warmup", self.warmup, 0, math.inf, integer=True)
        _check_number("seed", self.seed, 0, math.inf, integer=True)
        for name in ("lr", "grad_clip"):
            _check_number(name, getattr(self, name), 0, math.inf, open_low=True)
        for name in ("pair_weight", "remove_fraction", "p_uncond", "w_out"):
            _check_number(name, getattr(self, name), 0, 1)
        _check_number("ema_decay", self.ema_decay, 0, 1)
        if self.time_budget_s is not None:
            _check_number("time_budget_s", self.time_budget_s, 0, math.inf, open_low=True)

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> ColdStartConfig:
        params = dict(params or {})
        reject_unknown("ColdStartConfig", cls, params)
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_number(
    name: str, v: Any, low: float, high: float, integer: bool = False, open_low: bool = False
) -> None:
    kind = int if integer else int | float
    ok = not isinstance(v, bool) and isinstance(v, kind) and low <= v <= high
    if not ok or (open_low and v == low):
        bound = f"> {low}" if open_low else f"in [{low}, {high}]"
        what = "an integer" if integer else "a number"
        raise ValueError(f"ColdStartConfig.{name} must be {what} {bound}, got {v!r}")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Set torch's intra-op threads for a block and restore them (the caller's setting wins)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def draw_batch(
    procedural: EditPairs, given: EditPairs | None, config: ColdStartConfig, gen: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """A batch mixing given and procedural pairs; each item is a given pair with prob
    ``pair_weight``, so a handful of AOT-SFT pairs is seen far more often than its share."""
    b = config.batch_size
    n_given = int((torch.rand(b, generator=gen) < config.pair_weight).sum()) if given else 0
    idx = torch.randint(len(procedural), (b - n_given,), generator=gen)
    parts = [procedural.batch(idx)]
    if n_given:
        parts.append(given.batch(torch.randint(len(given), (n_given,), generator=gen)))
    return tuple(torch.cat(t) for t in zip(*parts, strict=True))


def _procedural_pairs(
    pipe: BoxEditPipeline, config: ColdStartConfig, world_cfg: WorldConfig
) -> EditPairs:
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    pairs = make_edit_pairs(
        rng,
        world_cfg,
        config.n_procedural_pairs,
        config.remove_fraction,
        pipe.config.crop_size,
        pipe.config.crop_scale,
        config.edits_per_scene,
    )
    logger.info(
        "cold start: %d procedural pairs in %.1f s", len(pairs), time.perf_counter() - start
    )
    return pairs


def _run_checkpoint(
    pipe: BoxEditPipeline, ema: EMAModel, fn: Checkpoint, secs: float, step: int
) -> None:
    """Hand the EMA weights to ``fn`` (eval mode), then restore the raw training weights."""
    params = list(pipe.unet.parameters())
    ema.store(params)
    ema.copy_to(params)
    pipe.unet.eval()
    fn(secs, step, pipe)
    pipe.unet.train()
    ema.restore(params)


def train_cold_start(
    pipe: BoxEditPipeline,
    config: ColdStartConfig,
    world_cfg: WorldConfig,
    given_pairs: EditPairs | None = None,
    checkpoints_s: Sequence[float] = (),
    on_checkpoint: Checkpoint | None = None,
    procedural_pairs: EditPairs | None = None,
    state_path: Path | None = None,
) -> tuple[BoxEditPipeline, pd.DataFrame]:
    """Train ``pipe.unet`` in place; returns the pipeline holding the EMA weights and a per-step
    log (step, loss; no wall clock, so a rerun writes the same log). Deterministic on CPU for a
    fixed seed and thread count. ``on_checkpoint(seconds, step, pipe)`` sees the EMA weights
    each time the training clock passes one of ``checkpoints_s``; its own time is not counted. Pass
    ``procedural_pairs`` to reuse pairs already made (then ``n_procedural_pairs`` is ignored).
    With ``state_path`` the full training state is saved there every ``SAVE_EVERY_S`` seconds
    of training and at the end, and a run finding the file resumes from it (same seed and
    config assumed), so a killed run loses at most a minute."""
    if given_pairs is not None and len(given_pairs) == 0:
        given_pairs = None
    for name, pairs in (("procedural", procedural_pairs), ("given", given_pairs)):
        if pairs is not None and pairs.src.shape[-1] != pipe.config.crop_size:
            raise ValueError(
                f"{name} pairs are {pairs.src.shape[-1]} px crops but the pipeline's "
                f"crop_size is {pipe.config.crop_size}"
            )
    with torch_threads(config.threads):
        procedural = procedural_pairs
        if procedural is None:
            procedural = _procedural_pairs(pipe, config, world_cfg)
        return _train(
            pipe,
            config,
            procedural,
            given_pairs,
            sorted(checkpoints_s),
            on_checkpoint,
            state_path,
        )


def _train(
    pipe: BoxEditPipeline,
    config: ColdStartConfig,
    procedural: EditPairs,
    given: EditPairs | None,
    checkpoints: list[float],
    on_checkpoint: Checkpoint | None,
    state_path: Path | None,
) -> tuple[BoxEditPipeline, pd.DataFrame]:
    unet, dev = pipe.unet.train(), pipe.unet.device
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr)
    st = TrainState(
        unet,
        opt,
        get_constant_schedule_with_warmup(opt, config.warmup),
        EMAModel(unet.parameters(), decay=config.ema_decay),
        torch.Generator().manual_seed(config.seed),
        rows=[],
    )
    if state_path is not None and state_path.exists():
        st.load(state_path)
        checkpoints = [c for c in checkpoints if c > st.clock]
    last_save = st.clock
    bar = tqdm(range(st.step + 1, config.steps + 1), desc="attacker cold start", unit="step")
    for step in bar:
        if config.time_budget_s is not None and st.clock >= config.time_budget_s:
            break
        start = time.perf_counter()
        loss = _step(st, config, [t.to(dev) for t in draw_batch(procedural, given, config, st.gen)])
        st.clock += time.perf_counter() - start
        st.rows.append({"step": step, "loss": loss})
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        while checkpoints and st.clock >= checkpoints[0] and on_checkpoint is not None:
            _run_checkpoint(pipe, st.ema, on_checkpoint, checkpoints.pop(0), step)
        if state_path is not None and st.clock - last_save >= SAVE_EVERY_S:
            st.save(state_path)
            last_save = st.clock
    bar.close()
    if state_path is not None:
        st.save(state_path)
    if config.time_budget_s is not None and st.clock >= config.time_budget_s:
        logger.info(
            "cold start: time budget %.0f s reached at step %d", config.time_budget_s, st.step
        )
    st.ema.copy_to(unet.parameters())
    unet.eval()
    # the training clock is resume state (`st.clock`), not part of the log; `columns` also reads
    # a state saved before the rows lost their seconds
    log = pd.DataFrame(st.rows, columns=["step", "loss"])
    final = log["loss"].iloc[-1] if len(log) else float("nan")
    logger.info("cold start: %d steps in %.1f s, final loss %.4f", len(log), st.clock, final)
    return pipe, log


def _step(st: TrainState, config: ColdStartConfig, batch: list[torch.Tensor]) -> float:
    """One optimiser step (AdamW, clipped gradients, LR schedule, EMA update); the loss."""
    x0, src, mask, cls = batch
    loss = flow_matching_loss(st.unet, x0, src, mask, cls, config.p_uncond, config.w_out, st.gen)
    st.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(st.unet.parameters(), config.grad_clip)
    st.opt.step()
    st.schedule.step()
    st.ema.step(st.unet.parameters())
    return loss.item()
