"""The warm-up takes idle cores, and the Defender's weights do not depend on when it does."""

from __future__ import annotations

import time
from functools import partial
from itertools import cycle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from aot.defender import Defender
from aot.defender.examples import world_examples
from aot.defender.sft import DefenderSFTConfig, train_defender_sft
from aot.defender.spare_cores import SpareCoreThreads, threads_for


@pytest.fixture
def one_thread():  # noqa: ANN201
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_threads_follow_the_cores_others_leave() -> None:
    assert threads_for(cores=2, busy=2.0, own=1.0, low=1, high=2) == 1  # beside the cold start
    assert threads_for(cores=2, busy=1.0, own=1.0, low=1, high=2) == 2  # alone
    assert threads_for(cores=2, busy=1.9, own=1.85, low=1, high=2) == 2  # alone on two
    assert threads_for(cores=2, busy=2.0, own=0.9, low=1, high=2) == 1
    assert threads_for(cores=4, busy=1.0, own=0.0, low=1, high=8) == 3
    assert threads_for(cores=2, busy=2.0, own=0.0, low=1, high=2) == 1  # never below the start


def test_the_load_is_read_from_cpu_time_counters() -> None:
    callback = SpareCoreThreads(max_threads=2)
    assert callback._load() == (0.0, 0.0)  # the first reading starts the interval
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:  # one core busy in this process
        pass
    busy, own = callback._load()
    assert 0.5 <= own <= 1.2
    assert busy >= own - 0.2  # the machine's count includes this process


def test_the_callback_switches_and_restores(one_thread, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr("aot.defender.spare_cores.machine_cores", lambda: 2)
    callback = SpareCoreThreads(max_threads=2, every=2)
    loads = iter([(0.0, 0.0), (2.0, 1.0), (1.0, 1.0), (2.0, 2.0), (2.0, 0.9)])
    monkeypatch.setattr(callback, "_load", lambda: next(loads))
    callback.on_train_begin(None, None, None)
    seen = []
    for step in range(1, 9):
        callback.on_step_end(None, SimpleNamespace(global_step=step), None)
        seen.append(torch.get_num_threads())
    # readings at steps 2, 4, 6, 8: busy beside another process, then alone, alone on two, busy
    assert seen == [1, 1, 1, 2, 2, 2, 2, 1]
    assert callback.switches == [(4, 2), (8, 1)]
    torch.set_num_threads(2)
    callback.on_train_end(None, None, None)
    assert torch.get_num_threads() == 1


def test_switching_threads_mid_training_keeps_every_weight(
    tiny_defender_dir: Path, world, tmp_path: Path, one_thread, monkeypatch
) -> None:  # noqa: ANN001
    records, images, graphs = world
    examples = world_examples(records.head(24), images, graphs, mode="word", repeats=2)
    monkeypatch.setattr("aot.defender.spare_cores.machine_cores", lambda: 2)
    # every step's reading says the other core is idle, then busy, in turn
    loads = cycle([(1.0, 1.0), (2.0, 1.0)])
    monkeypatch.setattr(SpareCoreThreads, "_load", lambda self: next(loads))
    monkeypatch.setattr("aot.defender.sft.SpareCoreThreads", partial(SpareCoreThreads, every=1))
    counts: list[int] = []
    set_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (counts.append(n), set_threads(n)))
    weights = []
    for spare in (None, 2):
        config = DefenderSFTConfig(
            max_steps=6, batch_size=4, logging_steps=1, spare_core_threads=spare
        )
        defender = Defender.from_pretrained(tiny_defender_dir)
        trained, _ = train_defender_sft(defender, examples, config, tmp_path / str(spare))
        weights.append(trained.model.state_dict())
        assert torch.get_num_threads() == 1
    assert counts == [2, 1, 2, 1, 2, 1]  # the second run: at steps 2 to 6, and back at the end
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(
        weights[0]["lm_head.weight"],
        Defender.from_pretrained(tiny_defender_dir).model.state_dict()["lm_head.weight"],
    )


def test_bad_spare_core_threads_are_named() -> None:
    with pytest.raises(ValueError, match="spare_core_threads"):
        DefenderSFTConfig.from_dict({"spare_core_threads": 0})
    with pytest.raises(ValueError, match="spare_core_threads"):
        DefenderSFTConfig.from_dict({"spare_core_threads": "2"})
