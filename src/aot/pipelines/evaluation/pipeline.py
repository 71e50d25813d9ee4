"""evaluation: clean accuracy per family (attacked, unseen and POPE suites come with issue 7)."""

from kedro.pipeline import Node, Pipeline

from aot.pipelines.evaluation.nodes import answer_records, summarize_clean


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ANN003
    return Pipeline(
        [
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
    )
