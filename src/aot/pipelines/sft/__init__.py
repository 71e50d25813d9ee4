"""The sft pipeline."""

from aot.pipelines.sft.pipeline import create_pipeline

__all__ = ["create_pipeline"]
