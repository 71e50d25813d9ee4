"""Project hooks: parameter and data checks before any work, global seeding, and a clear stop
when a pipeline's inputs were never produced. The checks themselves live in `aot.validation`."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import click
from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline

from aot.validation import (
    ParameterError,
    ParameterSources,
    catalog_path_errors,
    check_record_table,
    sections_of,
    validate_parameters,
)

logger = logging.getLogger(__name__)


class RunRefused(click.ClickException):
    """A check that stops a run before any work. Kedro's CLI runs under click, which prints a
    ``ClickException`` as ``Error: <message>`` and exits with 1; any other exception comes out
    as a traceback through Kedro, click and pluggy (about 170 lines) above the message."""


class MissingUpstreamError(RunRefused, RuntimeError):
    """A pipeline was asked to run before the pipeline that produces its inputs."""


class RefusedParameters(ParameterError, RunRefused):
    """The `ParameterError` the validation hook raises: the same type for callers, the list
    of problems alone on the command line."""

    def __init__(self, errors: list[str]) -> None:
        ParameterError.__init__(self, errors)
        RunRefused.__init__(self, str(self.args[0]))


class ParameterValidationHook:
    """Checks the parameters the selected pipelines read, and the catalog paths they use, before
    any other hook or node runs (`tryfirst`): every problem in one error, each line naming the
    dotted key and its parameters file (`aot.validation.validate_parameters`)."""

    def __init__(self) -> None:
        self._config: tuple[str, str | None, str | None] | None = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        """Where this run's configuration lives (`--conf-source` and `--env` included)."""
        loader = context.config_loader
        conf_source = getattr(loader, "conf_source", None)
        if conf_source:
            env = getattr(loader, "env", None) or getattr(loader, "default_run_env", None)
            self._config = (str(conf_source), getattr(loader, "base_env", None), env)

    @hook_impl(tryfirst=True)
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog
    ) -> None:
        from kedro.framework.project import settings

        root = Path(run_params.get("project_path") or Path.cwd())
        loader_args = getattr(settings, "CONFIG_LOADER_ARGS", {}) or {}
        conf_source, base_env, env = self._config or (
            str(root / getattr(settings, "CONF_SOURCE", "conf")),
            loader_args.get("base_env"),
            run_params.get("env") or loader_args.get("default_run_env"),
        )
        sources = ParameterSources.scan(
            Path(conf_source),
            [base_env or "base", env],
            root=root,
            runtime_params=run_params.get("runtime_params"),
        )
        # Through the dataset, not `catalog.load`, so the log shows no "Loading data" before
        # the run starts.
        dataset = catalog.get("parameters") if "parameters" in catalog else None
        params = dataset.load() if dataset is not None else {}
        errors = validate_parameters(
            params, sections=sections_of(pipeline.inputs()), root=root, sources=sources
        )
        errors += catalog_path_errors(_catalog_paths(pipeline, catalog), root)
        if errors:
            raise RefusedParameters(errors)


def _catalog_paths(pipeline: Pipeline, catalog: DataCatalog) -> dict[str, str]:
    paths = {}
    for name in sorted(pipeline.datasets()):
        if name.startswith("params:") or name == "parameters" or name not in catalog:
            continue
        path = _dataset_path(catalog.get(name))
        if path is not None:
            paths[name] = path
    return paths


# Record tables checked before the first node that reads them, with the images they reference.
RECORD_TABLES = {"source_records": "source_images", "extended_records": "extended_images"}


class RecordValidationHook:
    """Before the first node of a run that reads a record table (`RECORD_TABLES`), checks it
    against the record schema and the images it references, every one of which must decode
    (`aot.validation.check_record_table`): a truncated PNG, an empty table, a record missing a
    field or a box outside its image stops the run before the node starts, naming the record
    and the file."""

    def __init__(self) -> None:
        self._checked: set[tuple[str, str]] = set()

    @hook_impl
    def before_node_run(
        self, node: Any, catalog: DataCatalog, inputs: dict[str, Any], run_id: str | None = None
    ) -> None:
        for name, images_name in RECORD_TABLES.items():
            if name not in inputs or (str(run_id), name) in self._checked:
                continue
            images = inputs.get(images_name)
            dataset = catalog.get(images_name) if images_name in catalog else None
            if images is None and dataset is not None and dataset.exists():
                images = dataset.load()  # a listing of lazy loaders
            # ImageFolderDataset verified every file on load: here only the sizes are needed.
            verified = bool(getattr(dataset, "_verify", False))
            where = _dataset_path(catalog.get(name)) if name in catalog else None
            what = f"{name} ({where})" if where else name
            check_record_table(inputs[name], what, images, verify=not verified)
            self._checked.add((str(run_id), name))


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


def _dataset_path(dataset: Any) -> str | None:
    for attr in ("_filepath", "_path", "path", "filepath"):
        value = getattr(dataset, attr, None)
        if value is not None:
            return str(value)
    return None


def _describe_path(dataset: Any) -> str:
    return _dataset_path(dataset) or type(dataset).__name__
