"""selfplay: Attacker Flow-GRPO, curriculum and Defender DAPO, round after round."""

from aot.pipelines.selfplay.pipeline import create_pipeline

__all__ = ["create_pipeline"]
