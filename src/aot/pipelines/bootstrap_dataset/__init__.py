"""The bootstrap_dataset pipeline."""

from aot.pipelines.bootstrap_dataset.pipeline import create_pipeline

__all__ = ["create_pipeline"]
