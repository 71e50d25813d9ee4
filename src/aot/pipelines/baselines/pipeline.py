"""baselines: clean-data RL and static augmentation at the compute of all self-play rounds."""

from kedro.pipeline import Node, Pipeline

from aot.pipelines.baselines.nodes import train_clean_rl, train_static_aug


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ANN003
    return Pipeline(
        [
            Node(
                train_clean_rl,
                [
                    "sft_defender",
                    "extended_records",
                    "extended_images",
                    "params:selfplay.defender",
                    "params:baselines",
                    "params:seed",
                ],
                ["baseline_clean_rl_defender", "baseline_clean_rl_log"],
                name="train_clean_rl",
            ),
            Node(
                train_static_aug,
                [
                    "sft_defender",
                    "aot_sft_candidates",
                    "implanted_images",
                    "extended_records",
                    "extended_images",
                    "params:selfplay.defender",
                    "params:baselines",
                    "params:seed",
                ],
                ["baseline_static_aug_defender", "baseline_static_aug_log"],
                name="train_static_aug",
            ),
        ],
        tags="baselines",
    )
