"""The self-play schedule (conf/base/selfplay_schedule.yml), read by the pipeline registry."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

SCHEDULE_FILE = Path("conf") / "base" / "selfplay_schedule.yml"
_SOURCE_ROOT = Path(__file__).resolve().parents[4]


def schedule_path() -> Path:
    """``$AOT_SELFPLAY_SCHEDULE``, else the project's file (cwd first, then the source tree)."""
    if os.environ.get("AOT_SELFPLAY_SCHEDULE"):
        return Path(os.environ["AOT_SELFPLAY_SCHEDULE"])
    for root in (Path.cwd(), _SOURCE_ROOT):
        if (root / SCHEDULE_FILE).is_file():
            return root / SCHEDULE_FILE
    raise FileNotFoundError(f"self-play schedule not found: {SCHEDULE_FILE} (cwd {Path.cwd()})")


def load_rounds(path: Path | None = None) -> list[str]:
    """Round names in order; each must be ``round_<k>`` with k = 1, 2, ... ."""
    path = path or schedule_path()
    data = yaml.safe_load(path.read_text()) or {}
    rounds = list((data.get("rounds") or {}).keys())
    if not rounds:
        raise ValueError(f"{path}: `rounds` must name at least one round")
    expected = [f"round_{k}" for k in range(1, len(rounds) + 1)]
    if rounds != expected:
        raise ValueError(f"{path}: rounds must be {expected} in order, got {rounds}")
    return rounds
