"""evaluation: the held-out suites (clean, attacked by each Attacker, unseen manipulations,
POPE-style existence) answered by the base Defender and by each round's Defender."""

import warnings

from kedro.pipeline import Node, Pipeline

from aot.pipelines import bind
from aot.pipelines.evaluation.nodes import (
    answer_records,
    plot_robustness_by_round,
    robustness_by_round,
    summarize_clean,
)
from aot.pipelines.evaluation.suite_nodes import (
    answer_suites,
    attack_suite,
    build_suites,
    report_evaluation,
)
from aot.pipelines.selfplay.schedule import load_rounds

DATA = ["extended_scenes", "extended_records", "extended_images"]
BASELINES = ("clean_rl", "static_aug")


def create_pipeline(rounds: list[str] | None = None, **kwargs) -> Pipeline:  # noqa: ANN003
    # The evaluation reads each round's Defender and Attacker by their namespaced names
    # (`selfplay.round_1.defender`) on purpose; Kedro warns about dotted names read outside
    # their namespace on every run otherwise.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="One or more dataset names contain '.'", category=UserWarning
        )
        return _create_pipeline(rounds or load_rounds())


def _create_pipeline(rounds: list[str]) -> Pipeline:
    attackers = {"cold": "cold_attacker"} | {r: f"selfplay.{r}.attacker" for r in rounds}
    defenders = (
        {"base": "sft_defender"}
        | {name: f"baseline_{name}_defender" for name in BASELINES}
        | {f"aot_{r}": f"selfplay.{r}.defender" for r in rounds}
    )
    nodes = [
        Node(
            answer_records,
            inputs=["sft_defender", "extended_records", "extended_images", "params:evaluation"],
            outputs="clean_predictions",
            name="answer_clean_records",
        ),
        Node(
            summarize_clean,
            inputs="clean_predictions",
            outputs="clean_metrics",
            name="summarize_clean",
        ),
    ]
    attacked_tables, attacked_images = [], []
    for name, dataset in attackers.items():
        outputs = [f"evaluation_attacked_{name}", f"evaluation_attacked_images_{name}"]
        nodes.append(
            Node(
                bind(attack_suite, attacker_name=name),
                ["sft_defender", *DATA, "params:evaluation", "params:seed", dataset],
                outputs,
                name=f"attack_suite_{name}",
            )
        )
        attacked_tables.append(outputs[0])
        attacked_images.append(outputs[1])
    nodes.append(
        Node(
            bind(build_suites, attacker_names=tuple(attackers)),
            [
                "extended_records",
                "extended_images",
                "params:evaluation",
                "params:seed",
                *attacked_tables,
            ],
            ["evaluation_suites", "evaluation_suite_images"],
            name="build_suites",
        )
    )
    for name, dataset in defenders.items():
        nodes.append(
            Node(
                answer_suites,
                [
                    dataset,
                    "evaluation_suites",
                    "evaluation_suite_images",
                    "extended_images",
                    "params:evaluation",
                    "params:seed",
                    *attacked_images,
                ],
                f"evaluation_predictions_{name}",
                name=f"answer_suites_{name}",
            )
        )
    nodes.append(
        Node(
            bind(report_evaluation, model_names=tuple(defenders)),
            [f"evaluation_predictions_{name}" for name in defenders],
            ["evaluation_metrics", "evaluation_robustness", "evaluation_report"],
            name="report_evaluation",
        )
    )
    nodes += [
        Node(
            bind(robustness_by_round, model_names=tuple(defenders)),
            [f"evaluation_predictions_{name}" for name in defenders],
            "evaluation_robustness_by_round",
            name="robustness_by_round",
        ),
        Node(
            plot_robustness_by_round,
            "evaluation_robustness_by_round",
            "evaluation_robustness_by_round_plot",
            name="plot_robustness_by_round",
        ),
    ]
    return Pipeline(nodes, tags="evaluation")
