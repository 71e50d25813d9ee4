"""Self-play rounds: the curriculum an Attacker makes for the Defender, and round metrics."""

from aot.selfplay.curriculum import CurriculumConfig, attack_records, curate

__all__ = ["CurriculumConfig", "attack_records", "curate"]
