"""selfplay: N co-evolution rounds, namespaced copies ``selfplay.round_k`` of one template.

Round k starts from round k-1's Attacker and Defender (round 1: the cold-started Attacker and
the warmed-up Defender). N comes from conf/base/selfplay_schedule.yml (see `schedule`).
"""

from __future__ import annotations

from typing import Any

from kedro.pipeline import Node, Pipeline

from aot.pipelines import bind
from aot.pipelines.selfplay.nodes import (
    evaluate_round,
    make_curriculum,
    plot_round_gallery,
    summarize_rounds,
    train_attacker,
    train_defender,
)
from aot.pipelines.selfplay.schedule import load_rounds

DATA = ["extended_scenes", "extended_records", "extended_images"]


def round_template(round_name: str) -> Pipeline:
    """One round; datasets are local names that the namespace prefixes (``attacker_in`` and
    ``defender_in`` are mapped to the previous round's models)."""
    return Pipeline(
        [
            Node(
                bind(train_attacker, round_name=round_name),
                ["attacker_in", "defender_in", *DATA, "params:selfplay.attacker", "params:seed"],
                ["attacker", "attacker_log"],
                name="train_attacker",
            ),
            Node(
                bind(make_curriculum, round_name=round_name),
                ["attacker", "defender_in", *DATA, "params:selfplay.curriculum", "params:seed"],
                ["curriculum", "curriculum_images", "curriculum_stats"],
                name="make_curriculum",
            ),
            Node(
                bind(train_defender, round_name=round_name),
                [
                    "defender_in",
                    "curriculum",
                    "curriculum_images",
                    "extended_images",
                    "params:selfplay.defender",
                    "params:seed",
                ],
                ["defender", "defender_log"],
                name="train_defender",
            ),
            Node(
                bind(evaluate_round, round_name=round_name),
                [
                    "attacker",
                    "defender_in",
                    "defender",
                    *DATA,
                    "curriculum_stats",
                    "attacker_log",
                    "defender_log",
                    "params:selfplay.evaluation",
                    "params:seed",
                ],
                ["metrics", "attacks", "attack_images"],
                name="evaluate_round",
            ),
            Node(
                plot_round_gallery,
                ["attacks", "extended_images", "attack_images"],
                "gallery",
                name="plot_round_gallery",
            ),
        ]
    )


def create_pipeline(rounds: list[str] | None = None, **kwargs: Any) -> Pipeline:
    rounds = rounds or load_rounds()
    shared = {*DATA}
    params = {
        "params:selfplay.attacker",
        "params:selfplay.curriculum",
        "params:selfplay.defender",
        "params:selfplay.evaluation",
        "params:seed",
    }
    out = Pipeline([])
    previous = {"attacker_in": "cold_attacker", "defender_in": "sft_defender"}
    for name in rounds:
        namespace = f"selfplay.{name}"
        out += Pipeline(
            round_template(name),
            namespace=namespace,
            inputs={**previous, **{d: d for d in shared}},
            parameters=params,
            tags={"selfplay", name},
        )
        previous = {"attacker_in": f"{namespace}.attacker", "defender_in": f"{namespace}.defender"}
    out += Pipeline(
        [
            Node(
                summarize_rounds,
                [f"selfplay.{name}.metrics" for name in rounds],
                ["selfplay_rounds", "selfplay_curves"],
                name="summarize_rounds",
                namespace="selfplay",
                tags={"selfplay", "selfplay_summary"},
            )
        ]
    )
    return out
