"""baselines: the same DAPO recipe without the Attacker (clean data; static augmentation)."""

from aot.pipelines.baselines.pipeline import create_pipeline

__all__ = ["create_pipeline"]
