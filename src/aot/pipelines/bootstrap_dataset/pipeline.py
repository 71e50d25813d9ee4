"""bootstrap_dataset: source scenes and questions (later: scene extension and distractors)."""

from kedro.pipeline import Node, Pipeline

from aot.pipelines.bootstrap_dataset.nodes import generate_source_scenes, plot_world_gallery


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ANN003
    return Pipeline(
        [
            Node(
                generate_source_scenes,
                inputs=["params:world", "params:source", "params:seed"],
                outputs=["source_scenes", "source_records", "source_images"],
                name="generate_source_scenes",
            ),
            Node(
                plot_world_gallery,
                inputs=["source_records", "source_images"],
                outputs="world_gallery",
                name="plot_world_gallery",
            ),
        ]
    )
