"""The project's pipelines, registered explicitly so public names never depend on folder discovery."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from aot.pipelines import baselines, bootstrap_dataset, evaluation, selfplay, sft

# Order matters: it is the order of `__default__` and of the "run this first" hints.
PIPELINE_ORDER = ("bootstrap_dataset", "sft", "selfplay", "baselines", "evaluation")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines: dict[str, Pipeline] = {
        "bootstrap_dataset": bootstrap_dataset.create_pipeline(),
        "sft": sft.create_pipeline(),
        "selfplay": selfplay.create_pipeline(),
        "baselines": baselines.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
    }
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    return pipelines
