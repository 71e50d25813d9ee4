"""sft: the Defender warm-up on clean + AOT-SFT data, and the Attacker cold start (method §3.1, §5)."""

from kedro.pipeline import Node, Pipeline

from aot.pipelines.sft.nodes import cold_start_attacker, evaluate_cold_attacker, warm_up_defender


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ANN003
    return Pipeline(
        [
            Node(
                warm_up_defender,
                inputs=[
                    "base_defender",
                    "extended_scenes",
                    "extended_records",
                    "extended_images",
                    "aot_sft_pairs",
                    "implanted_images",
                    "params:sft",
                    "params:seed",
                ],
                outputs=["sft_defender", "sft_log", "sft_metrics"],
                name="warm_up_defender",
            ),
            Node(
                cold_start_attacker,
                inputs=[
                    "aot_sft_pairs",
                    "extended_images",
                    "implanted_images",
                    "params:attacker",
                    "params:world",
                    "params:seed",
                ],
                outputs=["cold_attacker", "cold_attacker_log"],
                name="cold_start_attacker",
            ),
            Node(
                evaluate_cold_attacker,
                inputs=[
                    "cold_attacker",
                    "base_defender",
                    "aot_sft_candidates",
                    "extended_images",
                    "implanted_images",
                    "params:attacker",
                    "params:world",
                    "params:seed",
                ],
                outputs="cold_attacker_metrics",
                name="evaluate_cold_attacker",
            ),
        ]
    )
