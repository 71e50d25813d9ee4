"""Evaluation beyond the clean test split: answering protocols (greedy / the paper's strict
multi-trial protocol), unseen image manipulations, POPE metrics, suite summaries with stable
metric keys, and loaders plus scoring for public benchmarks (POPE, HallusionBench, V*, HR-Bench).

Plain modules, no Kedro imports; the Defender is any object with
``aot.defender.Defender.generate``'s signature.
"""

from aot.evaluation.benchmarks import (
    BENCHMARK_COLUMNS,
    BENCHMARK_LOADERS,
    BenchmarkError,
    hallusion_metrics,
    load_hallusionbench,
    load_hrbench,
    load_pope,
    load_vstar,
    score_benchmark,
    shuffle_options,
)
from aot.evaluation.extraction import (
    EXTRACTORS,
    extract_hrbench,
    extract_pope,
    extract_vstar,
    get_extractor,
)
from aot.evaluation.paired import attack_success, common_attack_success
from aot.evaluation.pope import pope_metrics, pope_rows
from aot.evaluation.protocols import PROTOCOLS, answer_table, answer_tables
from aot.evaluation.suites import aggregate_seeds, flatten_metrics, mean_and_spread, summarize
from aot.evaluation.unseen import (
    UNSEEN_MANIPULATIONS,
    BoxMap,
    Manipulated,
    apply_unseen,
    colour_dependent,
)

__all__ = [
    "BENCHMARK_COLUMNS",
    "BENCHMARK_LOADERS",
    "EXTRACTORS",
    "PROTOCOLS",
    "UNSEEN_MANIPULATIONS",
    "BenchmarkError",
    "BoxMap",
    "Manipulated",
    "aggregate_seeds",
    "answer_table",
    "answer_tables",
    "attack_success",
    "apply_unseen",
    "colour_dependent",
    "common_attack_success",
    "extract_hrbench",
    "extract_pope",
    "extract_vstar",
    "flatten_metrics",
    "get_extractor",
    "hallusion_metrics",
    "load_hallusionbench",
    "load_hrbench",
    "load_pope",
    "load_vstar",
    "mean_and_spread",
    "pope_metrics",
    "pope_rows",
    "score_benchmark",
    "shuffle_options",
    "summarize",
]
