"""AOT-SFT bootstrap data: domain logic of the two-stage pipeline (aot-method.md section 2).

Stage 1 (``extension``, ``fillers``, ``checks``): the source scene becomes a region of a larger,
cluttered canvas; composition, duplication and realism checks gate it. Stage 2 (``implant``,
``strategies``, ``pairs``): distractor proposals that cannot change the ground truth are implanted,
and the ones that flip the Defender's answer are kept as effective (clean, edited) pairs.
Pure functions only; the Kedro wiring lives in ``aot.pipelines``.
"""

from aot.bootstrap.categories import (
    Forbidden,
    allowed_categories,
    forbidden_for_spec,
    forbidden_for_specs,
    make_prompt,
    parse_prompt,
)
from aot.bootstrap.checks import (
    CheckConfig,
    check_composition,
    check_duplication,
    check_realism,
    check_scenes,
    run_checks,
    summarize_checks,
)
from aot.bootstrap.detect import Detection, detect_objects
from aot.bootstrap.extension import (
    ExtendedScene,
    canvas_size,
    extend_scene,
    extend_scenes,
    extended_from_row,
    plan_clutter,
    remap_records,
    scenes_from_table,
    shift_scene,
    verify_answers,
)
from aot.bootstrap.fillers import (
    DiffusersFiller,
    Filler,
    ProceduralFiller,
    build_tiny_inpaint_pipeline,
    make_filler,
)
from aot.bootstrap.gallery import plot_pair_gallery
from aot.bootstrap.implant import (
    Proposal,
    implant,
    implant_candidates,
    propose_distractors,
    propose_for_records,
)
from aot.bootstrap.pairs import (
    PAIR_COLUMNS,
    build_pairs,
    effectiveness,
    summarize_pairs,
)
from aot.bootstrap.strategies import STRATEGIES

__all__ = [
    "PAIR_COLUMNS",
    "STRATEGIES",
    "CheckConfig",
    "Detection",
    "DiffusersFiller",
    "ExtendedScene",
    "Filler",
    "Forbidden",
    "ProceduralFiller",
    "Proposal",
    "allowed_categories",
    "build_pairs",
    "build_tiny_inpaint_pipeline",
    "canvas_size",
    "check_composition",
    "check_duplication",
    "check_realism",
    "check_scenes",
    "detect_objects",
    "effectiveness",
    "extend_scene",
    "extend_scenes",
    "extended_from_row",
    "forbidden_for_spec",
    "forbidden_for_specs",
    "implant",
    "implant_candidates",
    "make_filler",
    "make_prompt",
    "parse_prompt",
    "plan_clutter",
    "plot_pair_gallery",
    "propose_distractors",
    "propose_for_records",
    "remap_records",
    "run_checks",
    "scenes_from_table",
    "shift_scene",
    "summarize_checks",
    "summarize_pairs",
    "verify_answers",
]
