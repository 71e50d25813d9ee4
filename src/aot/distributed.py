"""Multi-process (multi-GPU, multi-node) training of one self-play round, under `accelerate launch`.

Kedro's CLI does not run under `accelerate launch` (kedro#4601; kedro-dvc.md section 6), so the
two trainers that need several GPUs at paper scale have this entry point instead. It reads the
project's configuration exactly as `kedro run --env <env>` does (Kedro's OmegaConfigLoader with
the project's settings; no KedroSession, no pipeline run, no hooks), checks the parameters it
uses, loads the round's inputs through the project's catalog and runs the same code as the
round's Kedro node, in every process:

    accelerate launch --config_file conf/accelerate/fsdp.yaml \\
        -m aot.distributed dapo --env paper --round round_1
    accelerate launch --config_file conf/accelerate/ddp_multi_gpu.yaml \\
        -m aot.distributed flow_grpo --env paper --round round_1
    python -m aot.distributed dapo --round round_1          # one process, same code

- `dapo` is the node `selfplay.<round>.train_defender`: DAPO of the Defender on the round's
  curriculum (`aot.defender.dapo.train_defender_dapo`; TRL's GRPOTrainer is accelerate-aware:
  DDP, FSDP or DeepSpeed from the accelerate config). It writes `selfplay.<round>.defender` and
  `selfplay.<round>.defender_log`.
- `flow_grpo` is `selfplay.<round>.train_attacker`: Flow-GRPO of the Attacker against the
  frozen Defender (`aot.attacker.flow_grpo.train_attacker_flow_grpo` with an `Accelerator`:
  data parallel, gradients averaged over processes). It writes `selfplay.<round>.attacker` and
  `selfplay.<round>.attacker_log`.

Inputs are the round's node inputs (round 1 reads `sft_defender` / `cold_attacker`, round k
reads round k-1's models), or the folders given with `--defender` / `--attacker` (for example a
Qwen-Image-Edit pipeline folder). Every process loads its own copy. Outputs are written by the
main process only, through the catalog's datasets (model folders are written to a temporary
name and swapped in, so a crash never leaves half a model), after which every process waits
for it. The round's checkpoints (`checkpoint_root/<round>/...`) make an interrupted run resume
when it is launched again with the same command, as the Kedro node does.

`--cpu` (the default when no GPU is visible) runs every process on the CPU with the gloo
backend: `conf/accelerate/cpu_gloo_2proc.yaml` and the test `tests/test_distributed.py` use it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger("aot.distributed")

TRAINERS = ("dapo", "flow_grpo")


# ------------------------------------------------------------------------------ config


def parse_params(text: str | None) -> dict[str, Any]:
    """`--params` as `kedro run` takes it: `a.b=1,c=x` -> {"a": {"b": 1}, "c": "x"} (values
    parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"--params: expected key=value, got {item!r}")
        key, value = (part.strip() for part in item.split("=", 1))
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


class ProjectConfig:
    """The parameters and the catalog of one environment, as `kedro run --env <env>` sees
    them (`aot.settings.CONFIG_LOADER_ARGS`; catalog paths made absolute under the project)."""

    def __init__(
        self,
        project_path: str | os.PathLike = ".",
        env: str | None = None,
        runtime_params: Mapping[str, Any] | None = None,
    ) -> None:
        from kedro.config import MissingConfigException, OmegaConfigLoader
        from kedro.framework.context.context import _convert_paths_to_absolute_posix
        from kedro.framework.startup import bootstrap_project
        from kedro.io import DataCatalog

        from aot.settings import CONFIG_LOADER_ARGS
        from aot.validation import load_parameters

        self.root = Path(project_path).resolve()
        bootstrap_project(self.root)
        args = dict(CONFIG_LOADER_ARGS)
        self.env = env or args.get("default_run_env")
        self.params, self.sources = load_parameters(self.root, self.env, runtime_params)
        loader = OmegaConfigLoader(
            conf_source=str(self.root / "conf"),
            env=self.env,
            runtime_params=dict(runtime_params or {}),
            **args,
        )
        catalog = _convert_paths_to_absolute_posix(
            project_path=self.root, conf_dictionary=loader["catalog"]
        )
        try:
            credentials = loader["credentials"]
        except MissingConfigException:
            credentials = {}
        self.catalog = DataCatalog.from_config(catalog, credentials=credentials)

    def check(self, sections: Sequence[str]) -> None:
        """The project's parameter checks for the sections a trainer reads (ParameterError)."""
        from aot.validation import check_parameters

        check_parameters(self.params, sections=sections, root=self.root, sources=self.sources)

    def path_of(self, value: str) -> str:
        """A parameter path as the nodes see it (relative to the project root)."""
        return str(value if Path(value).is_absolute() else self.root / value)


def project_rounds(config: Any) -> list[str]:
    """The self-play rounds of the project at ``config.root`` (its schedule file)."""
    from aot.pipelines.selfplay.schedule import SCHEDULE_FILE, load_rounds

    path = Path(config.root) / SCHEDULE_FILE
    return load_rounds(path if path.is_file() else None)


def round_inputs(round_name: str, rounds: Sequence[str]) -> dict[str, str]:
    """The catalog names of a round's input models (the pipeline's `attacker_in` /
    `defender_in`)."""
    if round_name not in rounds:
        raise ValueError(f"unknown round {round_name!r}; the schedule has {list(rounds)}")
    k = rounds.index(round_name)
    if k == 0:
        return {"attacker": "cold_attacker", "defender": "sft_defender"}
    prev = f"selfplay.{rounds[k - 1]}"
    return {"attacker": f"{prev}.attacker", "defender": f"{prev}.defender"}


# ------------------------------------------------------------------------------ models


def load_defender(path: str | os.PathLike, dtype: str | None = None) -> Any:
    from aot.defender import Defender

    return Defender.from_pretrained(path, dtype=dtype)


def load_attacker(path: str | os.PathLike, dtype: str | None = None) -> Any:
    """A saved Attacker folder: our `BoxEditPipeline`, or a diffusers pipeline such as
    `QwenImageEditPipeline` with its planner (`aot.attacker.AttackerPipeline`)."""
    import torch

    from aot.attacker.loading import AttackerPipeline

    kwargs: dict[str, Any] = {"torch_dtype": getattr(torch, dtype)} if dtype else {}
    return AttackerPipeline.from_pretrained(path, **kwargs)


# ---------------------------------------------------------------------------- trainers


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _wait() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def _num_processes() -> int:
    from accelerate import PartialState

    return PartialState().num_processes


def run_dapo(
    config: ProjectConfig,
    round_name: str,
    *,
    defender_path: str | None = None,
    dtype: str | None = None,
    cpu: bool = False,
    reward_funcs: Sequence[Any] | None = None,
    callbacks: Sequence[Any] = (),
) -> tuple[Any, Any]:
    """The round's Defender DAPO in this process (every process of the launch runs it)."""
    from aot.defender.dapo import train_defender_dapo
    from aot.pipelines.selfplay.nodes import round_seed

    config.check(["selfplay.defender", "seed"])
    inputs = round_inputs(round_name, project_rounds(config))
    catalog = config.catalog
    params = dict(config.params["selfplay"]["defender"])
    seed = int(config.params["seed"])
    params.setdefault("seed", round_seed(seed, round_name))
    defender = (
        load_defender(defender_path, dtype) if defender_path else catalog.load(inputs["defender"])
    )
    table = catalog.load(f"selfplay.{round_name}.curriculum")
    images = {
        **catalog.load("extended_images"),
        **catalog.load(f"selfplay.{round_name}.curriculum_images"),
    }
    root = Path(
        config.path_of(params.pop("checkpoint_root", "data/06_models/selfplay_checkpoints"))
    )
    out_dir = root / round_name / "defender"
    world = _num_processes()
    # as the node: a small table still trains (each process needs its own prompts)
    params["groups_per_step"] = max(
        1, min(int(params.get("groups_per_step", 8)), len(table) // world)
    )
    if cpu:  # TRL picks the GPU whenever one is visible
        params["extra"] = {**dict(params.get("extra") or {}), "use_cpu": True}
    trained, log = train_defender_dapo(
        defender, table, images, params, out_dir, reward_funcs=reward_funcs, callbacks=callbacks
    )
    if _is_main():
        catalog.save(f"selfplay.{round_name}.defender", trained)
        catalog.save(f"selfplay.{round_name}.defender_log", log)
        shutil.rmtree(out_dir, ignore_errors=True)
    _wait()
    return trained, log


def run_flow_grpo(
    config: ProjectConfig,
    round_name: str,
    *,
    attacker_path: str | None = None,
    defender_path: str | None = None,
    dtype: str | None = None,
    cpu: bool = False,
    reward_fn: Any | None = None,
) -> tuple[Any, Any]:
    """The round's Attacker Flow-GRPO in this process (every process of the launch runs it)."""
    from accelerate import Accelerator

    from aot.attacker.flow_grpo import train_attacker_flow_grpo
    from aot.attacker.loading import with_planner
    from aot.pipelines.selfplay.nodes import _split, round_seed

    config.check(["selfplay.attacker", "seed"])
    accelerator = Accelerator(cpu=cpu)
    inputs = round_inputs(round_name, project_rounds(config))
    catalog = config.catalog
    params = dict(config.params["selfplay"]["attacker"])
    seed = round_seed(int(config.params["seed"]), round_name)
    attacker = (
        load_attacker(attacker_path, dtype) if attacker_path else catalog.load(inputs["attacker"])
    )
    defender = None
    if reward_fn is None:
        defender = (
            load_defender(defender_path, dtype)
            if defender_path
            else catalog.load(inputs["defender"])
        )
        defender.model.to(accelerator.device)
    records = catalog.load("extended_records")
    train = _split(records, "train", params.get("max_records"), seed)
    flow = {k: v for k, v in params.items() if k not in ("max_records", "checkpoint_root")}
    root = Path(
        config.path_of(params.get("checkpoint_root", "data/06_models/selfplay_checkpoints"))
    )
    checkpoints = root / round_name / "attacker"
    trained, log = train_attacker_flow_grpo(
        attacker,
        defender,
        train,
        catalog.load("extended_images"),
        flow,
        seed,
        scenes=catalog.load("extended_scenes"),
        reward_fn=reward_fn,
        checkpoint_dir=checkpoints,
        accelerator=accelerator,
    )
    if accelerator.is_main_process:
        catalog.save(f"selfplay.{round_name}.attacker", with_planner(trained))
        catalog.save(f"selfplay.{round_name}.attacker_log", log)
        shutil.rmtree(checkpoints, ignore_errors=True)
    accelerator.wait_for_everyone()
    return trained, log


# --------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aot.distributed",
        description="Train one self-play round's Defender (dapo) or Attacker (flow_grpo) in "
        "every process of an `accelerate launch` (or in one process).",
    )
    parser.add_argument("trainer", choices=TRAINERS)
    parser.add_argument("--round", required=True, help="round name, e.g. round_1")
    parser.add_argument("--env", default=None, help="Kedro environment (default: local)")
    parser.add_argument("--project", default=".", help="project root (default: cwd)")
    parser.add_argument(
        "--params", default=None, help="overrides as for kedro run: a.b=1,c=x (YAML values)"
    )
    parser.add_argument("--defender", default=None, help="Defender folder instead of the catalog's")
    parser.add_argument("--attacker", default=None, help="Attacker folder instead of the catalog's")
    parser.add_argument(
        "--dtype", default=None, help="dtype for --defender/--attacker folders (e.g. bfloat16)"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="run on the CPU (gloo); the default without a GPU"
    )
    return parser


def _setup_logging() -> None:
    from accelerate import PartialState

    level = logging.INFO if PartialState().is_main_process else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s [rank %(process)d] %(name)s %(levelname)s: %(message)s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    for var, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("DO_NOT_TRACK", "1"),
        ("KEDRO_DISABLE_TELEMETRY", "true"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(var, value)
    import torch
    from accelerate import PartialState

    args = build_parser().parse_args(argv)
    cpu = args.cpu or not torch.cuda.is_available()
    PartialState(cpu=cpu)  # joins the launch's process group before any model loads
    _setup_logging()
    config = ProjectConfig(args.project, args.env, parse_params(args.params))
    if args.trainer == "dapo":
        run_dapo(config, args.round, defender_path=args.defender, dtype=args.dtype, cpu=cpu)
    else:
        run_flow_grpo(
            config,
            args.round,
            attacker_path=args.attacker,
            defender_path=args.defender,
            dtype=args.dtype,
            cpu=cpu,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
