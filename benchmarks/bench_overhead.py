"""Where a pipeline's wall time goes: model forward, backward, optimizer, and everything else.

Run: `.venv/bin/python benchmarks/bench_overhead.py --env base --pipeline selfplay
--namespaces selfplay.round_1` (after `dvc repro`, which made the round's inputs).
The project's conf/ and data/ are copied to a temporary folder and the pipeline runs there,
in-process through a KedroSession, so data/ is left as it was. Timers wrap the forward of every
model class the project trains or queries (the Qwen2.5-VL Defender, its backbone and, on its
own, its vision tower; the Attacker's UNet and edit planner; a Qwen-Image-Edit transformer; the
optional diffusion filler's UNet and text encoder), the VAEs' `encode` and `decode`, the
forward TRL's GRPOTrainer puts on its policy (a fused LM head: the DAPO loss's forward),
`torch.Tensor.backward` / `torch.autograd.backward`, and the optimizers' `step`; nested calls
count once. "Overhead" is the rest: Kedro, dataset I/O, image processing, tokenising, sampling
loops in Python, rewards. Per-node shares come from Kedro's node hooks. With `--functions`,
the functions in `FUNCTIONS` (processor, tokenizer, `generate`, TRL's rollout steps, our
rewards and dataset reads) are timed too, each with the model time inside it, so the table
says where the overhead goes; the timers add a little of their own.

The session's wall leaves out what a `kedro run` process does before it: importing torch,
transformers, diffusers, TRL and the project's pipelines. That start-up is timed on its own, as
a fresh interpreter that bootstraps the project and builds the pipeline registry (the registry
is imported before the timed session here, so nothing counts twice), and reported in a second
share that includes it. Writes benchmarks/results/overhead_<env>.md for the self-play round,
overhead_<pipeline>_<env>.md for any other pipeline.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from report_notes import write_report

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_overhead")


class Clock:
    """Seconds spent per kind (forward, backward, optimizer), outermost call only."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = 0

    def wrap(self, kind: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[kind] += time.perf_counter() - start
                self._depth -= 1

        return timed

    def total(self) -> float:
        return sum(self.seconds.values())


# (module, attribute path) of the functions `--functions` times: where a round's time outside
# the models was found to go (README, Measurements).
FUNCTIONS: list[tuple[str, str]] = [
    ("transformers.processing_utils", "ProcessorMixin.__call__"),
    ("transformers.processing_utils", "ProcessorMixin.apply_chat_template"),
    ("transformers.tokenization_utils_base", "PreTrainedTokenizerBase.__call__"),
    ("transformers.models.qwen2_vl.image_processing_qwen2_vl", "Qwen2VLImageProcessor.preprocess"),
    ("transformers.generation.utils", "GenerationMixin.generate"),
    ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLModel.get_rope_index"),
    ("aot.defender.rope_cache", "rope_index_by_layout"),
    ("trl.trainer.grpo_trainer", "GRPOTrainer._generate_and_score_completions"),
    ("trl.trainer.grpo_trainer", "GRPOTrainer._tokenize_prompts"),
    ("trl.trainer.grpo_trainer", "GRPOTrainer._get_per_token_logps_and_entropies"),
    ("diffusers.models.modeling_utils", "get_parameter_dtype"),
    ("datasets.arrow_dataset", "Dataset.__getitem__"),
    ("datasets.arrow_dataset", "Dataset.__getitems__"),
    ("PIL.ImageFile", "ImageFile.load"),
    ("PIL.Image", "Image.save"),
    ("aot.defender.model", "Defender.generate"),
    ("aot.defender.model", "Defender.completion_probability"),
    ("aot.rewards.attack", "outside_similarity"),
    ("aot.rewards.attack", "integrity_gate"),
    ("aot.attacker.flow_grpo", "build_items"),
    ("aot.validation", "check_record_table"),
]


class FunctionTimes:
    """Calls, wall seconds and model seconds inside each timed function (outermost call only)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
        self._active: set[str] = set()

    def wrap(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if name in self._active:
                return fn(*args, **kwargs)
            self._active.add(name)
            start, model = time.perf_counter(), self.clock.total()
            try:
                return fn(*args, **kwargs)
            finally:
                row = self.rows[name]
                row[0] += 1
                row[1] += time.perf_counter() - start
                row[2] += self.clock.total() - model
                self._active.discard(name)

        return timed

    def instrument(self, functions: list[tuple[str, str]]) -> None:
        for module, path in functions:
            owner: Any = importlib.import_module(module)
            *parents, attr = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            original = getattr(owner, attr)
            timed = self.wrap(path, original)
            setattr(owner, attr, timed)
            # modules that imported a function by name hold their own reference to it
            for name, loaded in list(sys.modules.items()):
                if name.startswith("aot.") and getattr(loaded, attr, None) is original:
                    setattr(loaded, attr, timed)

    def table(self) -> str:
        lines = [
            "",
            "Where it goes (`--functions`: functions timed during the run; nested ones count in "
            "each row that holds them, so the rows overlap):",
            "",
            "| function | calls | wall s | model s inside | outside s |",
            "|---|---|---|---|---|",
        ]
        for name, (calls, wall, model) in sorted(
            self.rows.items(), key=lambda kv: -(kv[1][1] - kv[1][2])
        ):
            lines.append(
                f"| `{name}` | {calls:.0f} | {wall:.2f} | {model:.2f} | {wall - model:.2f} |"
            )
        return "\n".join(lines) + "\n"


def _model_classes() -> list[type]:
    from diffusers import UNet2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VisionTransformerPretrainedModel,
        Qwen2_5_VLModel,
    )

    from aot.attacker.planner import EditPlanner

    # The vision tower on its own: `generate` encodes the images before the first forward
    # (transformers' multimodal encoder kwargs), outside the top-level model's forward.
    # The backbone too: TRL's fused LM head calls it directly (`_clock_fused_lm_heads`).
    classes: list[type] = [
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLModel,
        Qwen2_5_VisionTransformerPretrainedModel,
        UNet2DModel,
        EditPlanner,
    ]
    try:
        from diffusers import QwenImageTransformer2DModel

        classes.append(QwenImageTransformer2DModel)
    except ImportError:  # older diffusers: the tiny default does not need it
        pass
    # The diffusion filler's denoiser and text encoder (`aot.bootstrap.diffusion`, optional).
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    return [*classes, UNet2DConditionModel, CLIPTextModel]


def _vae_classes() -> list[type]:
    """VAEs the pipelines call through ``encode`` / ``decode`` rather than ``forward``: the
    diffusion filler's and Qwen-Image-Edit's."""
    from diffusers import AutoencoderKL

    classes: list[type] = [AutoencoderKL]
    try:
        from diffusers import AutoencoderKLQwenImage

        classes.append(AutoencoderKLQwenImage)
    except ImportError:
        pass
    return classes


def _clock_fused_lm_heads(clock: Clock) -> None:
    """Times the forward TRL's GRPOTrainer installs on its policy.

    `trl.trainer.utils.add_fused_lm_head` sets the model's ``forward`` on the instance: with
    ``fused_lm_head=True`` (the loss, and the old log-probs) it runs the backbone and projects
    through the LM head itself, so the class ``forward`` wrapped above never runs for it. Before
    this was timed, the DAPO loss's forward counted as outside the models.
    """
    import trl.trainer.utils as trl_utils

    original = trl_utils.add_fused_lm_head

    @functools.wraps(original)
    def add_fused_lm_head(model: Any, *args: Any, **kwargs: Any) -> None:
        original(model, *args, **kwargs)
        model.forward = clock.wrap("forward", model.forward)

    # TRL modules that imported it by name before now hold their own reference; those imported
    # later (GRPO's trainer, when the pipeline builds it) take the wrapped one from `trl_utils`
    for name, module in list(sys.modules.items()):
        if name.startswith("trl") and getattr(module, "add_fused_lm_head", None) is original:
            module.add_fused_lm_head = add_fused_lm_head


def instrument(clock: Clock) -> None:
    for cls in _model_classes():
        cls.forward = clock.wrap("forward", cls.forward)
    for cls in _vae_classes():
        cls.encode = clock.wrap("forward", cls.encode)
        cls.decode = clock.wrap("forward", cls.decode)
    _clock_fused_lm_heads(clock)
    torch.Tensor.backward = clock.wrap("backward", torch.Tensor.backward)
    torch.autograd.backward = clock.wrap("backward", torch.autograd.backward)
    for cls in (torch.optim.AdamW, torch.optim.Adam):
        cls.step = clock.wrap("optimizer", cls.step)


class NodeTimes:
    """Kedro hooks: wall and model seconds per node."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: list[tuple[str, float, float]] = []
        self._start: tuple[float, float] = (0.0, 0.0)
        self.io_seconds = 0.0
        self.io_start = 0.0

    def before_node_run(self, node: Any) -> None:
        self._start = (time.perf_counter(), self.clock.total())

    def after_node_run(self, node: Any) -> None:
        wall = time.perf_counter() - self._start[0]
        self.rows.append((node.name, wall, self.clock.total() - self._start[1]))


def run(
    env: str, pipeline: str, namespaces: list[str] | None, functions: FunctionTimes | None = None
) -> tuple[Clock, NodeTimes, float]:
    from kedro.framework.hooks import hook_impl
    from kedro.framework.project import configure_project
    from kedro.framework.session import KedroSession

    clock = functions.clock if functions is not None else Clock()
    instrument(clock)
    if functions is not None:
        functions.instrument(FUNCTIONS)
    nodes = NodeTimes(clock)

    class Hooks:
        @hook_impl
        def before_node_run(self, node: Any) -> None:
            nodes.before_node_run(node)

        @hook_impl
        def after_node_run(self, node: Any) -> None:
            nodes.after_node_run(node)

        # dataset loads and saves happen outside the node functions: timed as "dataset I/O"
        @hook_impl
        def before_dataset_loaded(self, dataset_name: str) -> None:
            nodes.io_start = time.perf_counter()

        @hook_impl
        def after_dataset_loaded(self, dataset_name: str) -> None:
            nodes.io_seconds += time.perf_counter() - nodes.io_start

        @hook_impl
        def before_dataset_saved(self, dataset_name: str) -> None:
            nodes.io_start = time.perf_counter()

        @hook_impl
        def after_dataset_saved(self, dataset_name: str) -> None:
            nodes.io_seconds += time.perf_counter() - nodes.io_start

    with tempfile.TemporaryDirectory(prefix="aot-overhead-") as tmp:
        project = Path(tmp)
        for name in ("conf", "data"):
            shutil.copytree(ROOT / name, project / name, symlinks=True)
        shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
        configure_project("aot")  # the installed package; data and conf come from the copy
        from kedro.framework.project import pipelines

        pipelines.keys()  # imports the registry now: its start-up is timed apart (`startup`)
        cwd = os.getcwd()
        os.chdir(project)
        try:
            start = time.perf_counter()
            with KedroSession.create(project_path=project, env=env) as session:
                session._hook_manager.register(Hooks())  # no public way to add a hook here
                session.run(pipeline_names=[pipeline], namespaces=namespaces)
            wall = time.perf_counter() - start
        finally:
            os.chdir(cwd)
    return clock, nodes, wall


STARTUP = """
from pathlib import Path
from kedro.framework.startup import bootstrap_project
bootstrap_project(Path.cwd())
from kedro.framework.project import pipelines
pipelines["__default__"]
"""


def startup(runs: int = 2) -> float:
    """Seconds a fresh interpreter takes to do what `kedro run` does before its session
    (imports, project bootstrap, the pipeline registry), the fastest of ``runs``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", STARTUP], cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


def report(
    clock: Clock, nodes: NodeTimes, wall: float, title: str, start_up: float | None = None
) -> str:
    model = clock.total()
    lines = [
        f"# Overhead: {title}",
        "",
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()} at start. Measured with "
        "`benchmarks/bench_overhead.py` (see its docstring for what is timed).",
        "",
        "| part | seconds | share of wall |",
        "|---|---|---|",
        *[
            f"| model {kind} | {s:.1f} | {s / wall:.1%} |"
            for kind, s in sorted(clock.seconds.items())
        ],
        f"| **outside forward, backward and optimizer** | **{wall - model:.1f}** | "
        f"**{(wall - model) / wall:.1%}** |",
        f"| - of which Kedro dataset loads and saves | {nodes.io_seconds:.1f} | "
        f"{nodes.io_seconds / wall:.1%} |",
        f"| - of which the rest (inside nodes: image processing, tokenising, Python loops, "
        f"rewards; Kedro itself) | {wall - model - nodes.io_seconds:.1f} | "
        f"{(wall - model - nodes.io_seconds) / wall:.1%} |",
        f"| wall (session run) | {wall:.1f} | 100% |",
        *(
            [
                f"| process start-up before the session (a fresh interpreter: imports, project, "
                f"pipeline registry; not in the wall above) | {start_up:.1f} | |",
                f"| **outside the models, start-up included** | **{wall - model + start_up:.1f}** "
                f"| **{(wall - model + start_up) / (wall + start_up):.1%}** of "
                f"{wall + start_up:.1f} s |",
            ]
            if start_up is not None
            else []
        ),
        "",
        "Per node (the node function only; its dataset loads and saves are not in these rows):",
        "",
        "| node | wall s | model s | outside s (share of node) |",
        "|---|---|---|---|",
        *[
            f"| {name} | {w:.1f} | {m:.1f} | {w - m:.1f} ({(w - m) / max(w, 1e-9):.0%}) |"
            for name, w, m in sorted(nodes.rows, key=lambda r: -(r[1] - r[2]))
        ],
    ]
    return "\n".join(lines) + "\n"


def default_report(args: argparse.Namespace) -> str:
    """overhead_<env>.md for the self-play round, overhead_<pipeline>_<env>.md otherwise, so
    measuring the evaluation does not overwrite the round's table."""
    if args.pipeline == "selfplay":
        return f"overhead_{args.env}.md"
    return f"overhead_{args.pipeline}_{args.env}.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", default="base")
    parser.add_argument("--pipeline", default="selfplay")
    parser.add_argument("--namespaces", nargs="*", default=["selfplay.round_1"])
    parser.add_argument(
        "--out",
        default=None,
        help="default: benchmarks/results/overhead_<env>.md for selfplay, "
        "overhead_<pipeline>_<env>.md otherwise",
    )
    parser.add_argument(
        "--functions", action="store_true", help="also time the functions in FUNCTIONS"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    functions = FunctionTimes(Clock()) if args.functions else None
    clock, nodes, wall = run(args.env, args.pipeline, args.namespaces or None, functions)
    title = f"`kedro run --env {args.env} --pipelines {args.pipeline}"
    title += f" --namespaces {','.join(args.namespaces)}`" if args.namespaces else "`"
    text = report(clock, nodes, wall, title, startup())
    if functions is not None:
        text += functions.table()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / default_report(args)
    write_report(out, text)
    logger.info(text)


if __name__ == "__main__":
    main()
