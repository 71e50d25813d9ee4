"""sft: the base Defender (the SFT warm-up and the Attacker cold start come with issue 3)."""

from kedro.pipeline import Node, Pipeline

from aot.pipelines.sft.nodes import build_base_defender


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ANN003
    return Pipeline(
        [
            Node(
                build_base_defender,
                inputs=["params:defender", "params:world", "params:seed"],
                outputs="base_defender",
                name="build_base_defender",
            ),
        ]
    )
