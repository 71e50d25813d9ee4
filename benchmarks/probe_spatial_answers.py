"""What a pipeline Defender answers to spatial questions: right answer against answer given.

Run (after `dvc repro`, or after a `kedro run` that wrote the Defenders): `.venv/bin/python
benchmarks/probe_spatial_answers.py [--defenders base_defender:short sft_defender:protocol]`.
Each Defender (a catalog name and the prompt style it was taught) answers every spatial
question of the `val` split of the source and the extended scenes, greedily, through
`aot.pipelines.evaluation.nodes.answer_records` (the node metrics' path). Prints accuracy and
the confusion table per Defender and scale; nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from aot.pipelines.evaluation.nodes import answer_records

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--defenders", nargs="+", default=["base_defender:short", "sft_defender:protocol"]
    )
    parser.add_argument("--env", default="base")
    parser.add_argument(
        "--conf-source",
        default=None,
        help="another conf folder, e.g. a trial's copy with its own data_root",
    )
    args = parser.parse_args()
    bootstrap_project(ROOT)
    with KedroSession.create(
        project_path=ROOT, env=args.env, conf_source=args.conf_source
    ) as session:
        catalog = session.load_context().catalog
        for item in args.defenders:
            name, style = item.split(":")
            defender = catalog.load(name)
            for scale in ("source", "extended"):
                records = catalog.load(f"{scale}_records")
                spatial = records[records["family"] == "spatial"]
                answers = answer_records(
                    defender,
                    spatial,
                    catalog.load(f"{scale}_images"),
                    {
                        "split": "val",
                        "answer_mode": "word",
                        "prompt_style": style,
                        "batch_size": 64,
                    },
                )
                given = answers["extracted"].fillna("(none)")  # the protocol's own extraction
                accuracy = float(answers["correct"].mean())
                print(
                    f"\n{name} ({style} prompts), {scale} scenes: {len(answers)} questions, "
                    f"accuracy {accuracy:.3f}"
                )
                print(
                    pd.crosstab(
                        answers["answer_text"], given, rownames=["right"], colnames=["given"]
                    ).to_string()
                )


if __name__ == "__main__":
    main()
