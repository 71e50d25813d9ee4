"""bootstrap_dataset: AOT-SFT, the paired clean/adversarial data (aot-method.md section 2).

source scenes -> scene extension + checks -> base Defender -> distractor proposals -> implanting
-> effectiveness filter -> effective pairs and a gallery. Nodes tagged `base_defender` form their
own DVC stage, so the Defender pretraining is cached per parameter set.
"""

from kedro.pipeline import Node, Pipeline

from aot.pipelines.bootstrap_dataset.defender_nodes import build_initial_defender, pretrain_defender
from aot.pipelines.bootstrap_dataset.extend_nodes import extend_source_scenes
from aot.pipelines.bootstrap_dataset.implant_nodes import (
    filter_effective,
    implant_distractors,
    plot_aot_sft_gallery,
    propose_distractors,
)
from aot.pipelines.bootstrap_dataset.nodes import generate_source_scenes, plot_world_gallery


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ANN003
    data = Pipeline(
        [
            Node(
                generate_source_scenes,
                inputs=["params:world", "params:source", "params:seed"],
                outputs=["source_scenes", "source_records", "source_images"],
                name="generate_source_scenes",
            ),
            Node(
                plot_world_gallery,
                ["source_records", "source_images"],
                "world_gallery",
                name="plot_world_gallery",
            ),
            Node(
                extend_source_scenes,
                inputs=[
                    "source_scenes",
                    "source_records",
                    "source_images",
                    "params:extension",
                    "params:world",
                    "params:seed",
                ],
                outputs=[
                    "extended_scenes",
                    "extended_records",
                    "extended_images",
                    "extension_report",
                ],
                name="extend_source_scenes",
            ),
        ],
        tags="source_data",
    )
    defender = Pipeline(
        [
            Node(
                build_initial_defender,
                inputs=["params:defender", "params:world", "params:seed"],
                outputs="initial_defender",
                name="build_initial_defender",
            ),
            Node(
                pretrain_defender,
                inputs=[
                    "initial_defender",
                    "source_scenes",
                    "source_records",
                    "source_images",
                    "params:pretrain",
                    "params:seed",
                    "extended_scenes",
                    "extended_records",
                    "extended_images",
                ],
                outputs=["base_defender", "pretrain_log", "pretrain_metrics"],
                name="pretrain_defender",
            ),
        ],
        tags="base_defender",
    )
    implant = Pipeline(
        [
            Node(
                propose_distractors,
                inputs=[
                    "extended_scenes",
                    "extended_records",
                    "params:implant",
                    "params:world",
                    "params:seed",
                ],
                outputs="distractor_candidates",
                name="propose_distractors",
            ),
            Node(
                implant_distractors,
                inputs=[
                    "distractor_candidates",
                    "extended_images",
                    "params:implant",
                    "params:world",
                    "params:seed",
                ],
                outputs="implanted_images",
                name="implant_distractors",
            ),
            Node(
                filter_effective,
                inputs=[
                    "base_defender",
                    "distractor_candidates",
                    "extended_images",
                    "implanted_images",
                    "params:effectiveness",
                    "params:seed",
                ],
                outputs=["aot_sft_candidates", "aot_sft_pairs", "aot_sft_report"],
                name="filter_effective",
            ),
            Node(
                plot_aot_sft_gallery,
                inputs=["aot_sft_pairs", "extended_images", "implanted_images"],
                outputs="aot_sft_gallery",
                name="plot_aot_sft_gallery",
            ),
        ],
        tags="aot_sft",
    )
    return data + defender + implant
