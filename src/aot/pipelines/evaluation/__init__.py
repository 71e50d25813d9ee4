"""The evaluation pipeline."""

from aot.pipelines.evaluation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
