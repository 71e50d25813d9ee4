"""Resumable cold-start state: a long CPU run killed halfway continues where it stopped.

Everything that decides the next step is saved (raw weights, EMA shadow, AdamW and LR-schedule
state, the batch/noise generator, the loss log and the training clock), so a resumed run's
losses equal an uninterrupted run's. Written atomically (temp file + rename): a kill during the
save leaves the previous state intact.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """The mutable parts of a cold-start loop."""

    unet: torch.nn.Module
    opt: Optimizer
    schedule: LRScheduler
    ema: EMAModel
    gen: torch.Generator
    rows: list[dict[str, float]]
    clock: float = 0.0

    @property
    def step(self) -> int:
        return len(self.rows)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "unet": self.unet.state_dict(),
                "opt": self.opt.state_dict(),
                "schedule": self.schedule.state_dict(),
                "ema": self.ema.state_dict(),
                "gen": self.gen.get_state(),
                "rows": self.rows,
                "clock": self.clock,
            },
            tmp,
        )
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        """Restore in place from ``path`` (a file this module wrote)."""
        blob: dict[str, Any] = torch.load(path, weights_only=True)
        self.unet.load_state_dict(blob["unet"])
        self.opt.load_state_dict(blob["opt"])
        self.schedule.load_state_dict(blob["schedule"])
        self.ema.load_state_dict(blob["ema"])
        self.gen.set_state(blob["gen"])
        self.rows = list(blob["rows"])
        self.clock = float(blob["clock"])
        logger.info("cold start: resumed from %s at step %d (%.0f s)", path, self.step, self.clock)
