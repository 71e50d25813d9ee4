"""Defender training that takes up cores other processes leave idle (hand-written: neither torch
nor transformers adapts its thread count to the machine's load).

In `dvc repro` the warm-up trains on one thread beside the Attacker's cold start (Kedro's
`ParallelRunner`, `OMP_NUM_THREADS=1`), and goes on alone for about two minutes after the cold
start ends, with the second core idle. `SpareCoreThreads` looks at the machine every few steps
and sets torch's threads to the cores no other process is using, between the count it started
with and ``max_threads``.

Only for the Defender: its forward and backward give the same bits on 1 and 2 threads on the
CPU (`benchmarks/probe_thread_invariance.py`; `tests/defender/test_spare_cores.py` trains with
the count switched at every step), so its weights do not depend on when the switch happens.
The Attacker's UNet does depend on the thread count, and keeps a fixed one.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import psutil
import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return psutil.cpu_count() or 1


def _busy_seconds(times: Any) -> float:
    """CPU seconds the whole machine spent on anything but idling."""
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def _own_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def threads_for(cores: int, busy: float, own: float, low: int, high: int) -> int:
    """Threads to use when ``busy`` cores are in use on the machine, ``own`` of them by this
    process: the cores left by the others (a quarter core of slack), within [low, high]."""
    others = max(busy - own, 0.0)
    return max(low, min(high, int(cores - others + 0.25)))


class SpareCoreThreads(TrainerCallback):
    """Every ``every`` steps, sets torch's threads to the cores other processes leave idle, at
    least the count training started with and at most ``max_threads``; restores it at the end."""

    def __init__(self, max_threads: int, every: int = 25) -> None:
        if max_threads < 1 or every < 1:
            raise ValueError("SpareCoreThreads: max_threads and every must be positive")
        self.max_threads = max_threads
        self.every = every
        self.base = torch.get_num_threads()
        self.process = psutil.Process()
        self._last: tuple[float, float, float] | None = None
        self.switches: list[tuple[int, int]] = []  # (step, threads from then on)

    def _load(self) -> tuple[float, float]:
        """Cores busy on the machine, and in this process, since the previous call (from CPU
        time counters, so no other caller of psutil moves the interval)."""
        now = (time.monotonic(), _busy_seconds(psutil.cpu_times()), _own_seconds(self.process))
        before, self._last = self._last, now
        if before is None:
            return 0.0, 0.0
        wall = max(now[0] - before[0], 1e-9)
        return (now[1] - before[1]) / wall, (now[2] - before[2]) / wall

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.base = torch.get_num_threads()
        self._load()  # the first reading only starts the interval

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step % self.every:
            return
        busy, own = self._load()
        cores = machine_cores()
        target = threads_for(cores, busy, own, self.base, self.max_threads)
        if target != torch.get_num_threads():
            torch.set_num_threads(target)
            self.switches.append((state.global_step, target))
            logger.info(
                "Step %d: %d torch threads (%.1f of %d cores busy, %.1f of them this process)",
                state.global_step,
                target,
                busy,
                cores,
                own,
            )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        torch.set_num_threads(self.base)
