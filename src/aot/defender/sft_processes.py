"""Defender SFT in several local processes, data parallel on the CPU (gloo) or one GPU each.

Hand-written because a Kedro node cannot run under `accelerate launch` (kedro-dvc.md section 6;
`aot.distributed`), so the node starts the processes itself. Each process is what `accelerate
launch` would make: the `RANK` / `WORLD_SIZE` / `MASTER_*` environment, from which TRL's
SFTTrainer (through accelerate) sets up DDP and shards every optimizer step's batch over the
processes. Nothing else changes: the same trainer (`train_defender_on_table`), the same recipe.

Why on a CPU: on the 2-core machine a forward and backward of the tiny Defender runs only 1.45 to
1.6 times faster on two threads than on one. The default pretraining in two one-thread processes
with half the batch each took 72 to 79% of one process's training time
(`benchmarks/results/pretrain_step.md`).

The Defender and the conversations reach the workers through a temporary folder: the model saved
with `save_pretrained`, the conversations as the Arrow tables the trainer reads (saved once,
memory-mapped by every process, so the rows are held once in the page cache) and their distinct
images pickled. Rank 0 saves the trained model and the training log there, and the caller loads
them back. The result is one Defender, as from one process, but not the same one: each process
takes the mean loss over its own share of the batch, and the two means are averaged, so tokens
weigh a little differently (one SGD step: 0.8% apart, median over weight tensors), and sums run
in another order. Over a run that is another trajectory. On seed 44 the default pretraining in
two processes missed the spatial jump that one process makes. So check a recipe's results again
when the process count changes.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.multiprocessing as mp

logger = logging.getLogger(__name__)


def in_distributed_run() -> bool:
    """True inside a process that `accelerate launch`, torchrun or this module started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def threads_per_process(processes: int, threads: int | None) -> int:
    """`threads` when given, else the machine's cores shared out (at least one each)."""
    if threads:
        return int(threads)
    return max(1, (os.cpu_count() or 1) // processes)


def _save_table(table: Any, folder: Path) -> None:
    table.rows.save_to_disk(str(folder / "rows"))
    with open(folder / "images.pkl", "wb") as f:
        pickle.dump(table.images, f, protocol=pickle.HIGHEST_PROTOCOL)


def _load_table(folder: Path) -> Any:
    from datasets import Dataset

    from aot.defender.sft import SFTTable

    if not folder.exists():
        return None
    with open(folder / "images.pkl", "rb") as f:
        images = pickle.load(f)
    # memory-mapped Arrow files: the processes share one copy of the rows in the page cache
    return SFTTable(Dataset.load_from_disk(str(folder / "rows")), images)


def _worker(
    rank: int,
    world: int,
    port: int,
    folder: str,
    config: Any,
    output_dir: str,
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        # accelerate sets its own thread count on a multi-CPU run unless this is set (the
        # trainer then sets torch's to `config.threads`)
        OMP_NUM_THREADS=str(config.threads),
    )
    from aot.defender.model import Defender
    from aot.defender.sft import train_defender_on_table

    work = Path(folder)
    defender = Defender.from_pretrained(work / "defender_in")
    trained, log = train_defender_on_table(
        defender,
        _load_table(work / "train"),
        config,
        Path(output_dir) / f"rank_{rank}",
        _load_table(work / "eval"),
    )
    if rank == 0:
        trained.save_pretrained(work / "defender_out")
        log.to_pickle(work / "log.pkl")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def train_in_processes(
    defender: Any,
    train: Any,
    evaluation: Any | None,
    config: Any,
    output_dir: str | Path,
) -> tuple[Any, pd.DataFrame]:
    """`train_defender_on_table` in `config.processes` processes (batch `config.batch_size` in
    all, an equal share each) on the `SFTTable`s ``train`` and ``evaluation`` (or None).
    Returns the trained Defender and rank 0's training log."""
    from aot.defender.model import Defender

    world = int(config.processes)
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} cannot be split over {world} processes")
    threads = threads_per_process(world, config.threads)
    per_process = replace(
        config, processes=1, batch_size=config.batch_size // world, threads=threads
    )
    work = Path(output_dir) / "processes"
    work.mkdir(parents=True, exist_ok=True)
    defender.save_pretrained(work / "defender_in")
    _save_table(train, work / "train")
    if evaluation is not None:
        _save_table(evaluation, work / "eval")
    port = free_port()
    logger.info(
        "Defender SFT in %d processes, %d thread(s) and batch %d each (gloo on 127.0.0.1:%d)",
        world,
        threads,
        per_process.batch_size,
        port,
    )
    try:  # the distributed environment is set in the started processes only
        mp.start_processes(
            _worker,
            args=(world, port, str(work), per_process, str(output_dir)),
            nprocs=world,
            start_method="spawn",
        )
    except mp.ProcessRaisedException as error:
        raise RuntimeError(f"Defender SFT in {world} processes failed:\n{error}") from error
    trained = Defender.from_pretrained(work / "defender_out")
    return trained, pd.read_pickle(work / "log.pkl")
