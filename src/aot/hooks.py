"""Project hooks: global seeding, and a clear stop when a pipeline's inputs were never produced."""

from __future__ import annotations

import logging
import random
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline

logger = logging.getLogger(__name__)


class MissingUpstreamError(RuntimeError):
    """A pipeline was asked to run before the pipeline that produces its inputs."""


class SeedHook:
    """Seeds Python, numpy and torch from `params:seed` before anything runs.

    Nodes still take their own seeds from parameters; this only pins library-internal randomness.
    """

    @hook_impl
    def before_pipeline_run(self, catalog: DataCatalog) -> None:
        seed = 0
        if "params:seed" in catalog:
            seed = int(catalog.load("params:seed"))
        random.seed(seed)
        import numpy as np

        np.random.seed(seed % 2**32)
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a hard dependency
            return
        torch.manual_seed(seed)


def _producers(dataset: str) -> list[str]:
    from kedro.framework.project import pipelines

    from aot.pipeline_registry import PIPELINE_ORDER

    found = [
        name
        for name in PIPELINE_ORDER
        if name in pipelines and dataset in pipelines[name].all_outputs()
    ]
    return found


def _hint(dataset: str) -> str:
    """What to run to make ``dataset``: a self-play round by namespace, else a pipeline."""
    parts = dataset.split(".")
    if len(parts) == 3 and parts[0] == "selfplay" and parts[1].startswith("round_"):
        return (
            f"run `kedro run --pipelines selfplay --namespaces selfplay.{parts[1]}` "
            f"(or `dvc repro selfplay@{parts[1]}`) first"
        )
    producers = _producers(dataset)
    if not producers:
        return "no registered pipeline produces it; check the catalog path"
    return f"run `kedro run --pipelines {producers[0]}` (or `dvc repro {producers[0]}`) first"


class MissingInputsHook:
    """Stops a run at once when a persisted input does not exist yet, naming what to run first.

    Without it, `kedro run --pipelines sft` on a fresh clone fails deep inside a node with a
    file-not-found error; here it fails before any work with the pipeline and DVC stage to run.
    """

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        missing: list[str] = []
        for name in sorted(pipeline.inputs()):
            if name.startswith("params:") or name == "parameters" or name not in catalog:
                continue
            dataset = catalog.get(name)
            if type(dataset).__name__ == "MemoryDataset":
                continue
            if not catalog.exists(name):
                hint = _hint(name)
                missing.append(f"  - '{name}' ({_describe_path(dataset)}): {hint}")
        if missing:
            requested = (
                run_params.get("pipeline_names") or run_params.get("pipeline_name") or "__default__"
            )
            raise MissingUpstreamError(
                f"Pipeline {requested} cannot start: {len(missing)} input(s) do not exist yet.\n"
                + "\n".join(missing)
            )


def _describe_path(dataset: Any) -> str:
    for attr in ("_filepath", "_path", "path", "filepath"):
        value = getattr(dataset, attr, None)
        if value is not None:
            return str(value)
    return type(dataset).__name__
