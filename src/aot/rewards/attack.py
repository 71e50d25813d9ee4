"""The Attacker's reward: semantic integrity x adversarial efficacy (aot-method.md §3.2, §3.5).

Small pure functions, each returning an EasyR1-style dict of named scores, so every part of the
reward can be logged and each is a parameter of ``AttackRewardConfig``:

* ``integrity_gate``: localized SSIM between the clean and the edited image on every target box
  (optionally dilated); 1 when every box reaches ``ssim_threshold`` (0.9 by default; the paper's
  value is unknown), else 0;
* ``ground_truth_guard``: 0 for an edit whose box overlaps a (dilated) target, whose category
  the question depends on (adds / removes the counted or queried category) or, with the scene
  graph, that changes the exactly re-derived answer;
* ``efficacy_reward``: the frozen Defender's K answers on the edited image; 1 when all K are
  wrong ("consecutive reasoning failures"), or the fraction wrong (``graded``), and only when
  the Defender answers the clean image right;
* ``edit_validity``: the world's colour and shape test inside the box for add / replace, and
  for remove that the box now matches the background behind the object (guards against the
  reward hacking by degradation measured in ``shared/notes/exp-attacker-editor.md`` §4);
  with ``validity_judge: defender`` (``paper``) the Defender judges instead, answering
  ``judge_question`` on ``judge_crop`` of the edit (``judged_validity``);
* ``outside_similarity``: SSIM of the scene outside the edit box (a whole-image editor's
  "keep the rest of the scene" term; 1 for the paste-back box editor);
* ``composite_reward``: ``gate x gt_ok x [valid] x efficacy + validity_weight x gate x valid +
  fidelity_weight x outside_ssim``.

Images are (H, W, 3) uint8 arrays or PIL images; boxes are (x0, y0, x1, y1), ends exclusive.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from aot.config import reject_unknown
from aot.rewards.answer import is_correct

VALIDITY_MODES = ("gate", "off")
VALIDITY_CHECKS = ("colour", "shape")
# Who decides whether an edit shows what was planned: the world's pixel tests (tiny default) or
# the Defender itself as a yes/no judge on a crop of the edit box (`paper`: open-world images).
VALIDITY_JUDGES = ("world", "defender")


def _arr(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)


def _clip(box: Sequence[int], width: int, height: int, margin: int = 0) -> tuple[int, ...]:
    x0, y0, x1, y1 = (int(v) for v in box)
    return (
        max(0, x0 - margin),
        max(0, y0 - margin),
        min(width, x1 + margin),
        min(height, y1 + margin),
    )


def _overlaps(a: Sequence[int], b: Sequence[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def box_ssim(clean: Any, edited: Any, box: Sequence[int], margin: int = 0) -> float:
    """SSIM of the two images on ``box`` grown by ``margin`` px (clipped to the image).

    scikit-image's windowed SSIM (RGB, data range 255) with a window that fits small boxes
    (``aot.bootstrap.checks.local_ssim``); an empty box scores 1.
    """
    from aot.bootstrap.checks import local_ssim

    a, b = _arr(clean), _arr(edited)
    x0, y0, x1, y1 = _clip(box, a.shape[1], a.shape[0], margin)
    if x1 <= x0 or y1 <= y0:
        return 1.0
    return local_ssim(a[y0:y1, x0:x1], b[y0:y1, x0:x1])


def integrity_gate(
    clean: Any,
    edited: Any,
    target_boxes: Sequence[Sequence[int]],
    threshold: float = 0.9,
    margin: int = 0,
) -> dict[str, float]:
    """``gate`` 1 when SSIM >= ``threshold`` on every target box (dilated by ``margin``), else 0;
    ``target_ssim_min`` is the lowest box score (1 when the question has no target box)."""
    scores = [box_ssim(clean, edited, b, margin) for b in target_boxes]
    low = min(scores) if scores else 1.0
    return {
        "gate": float(low >= threshold),
        "target_ssim_min": float(low),
        "n_targets": float(len(scores)),
    }


def _spec(spec: Any) -> dict[str, Any] | None:
    if spec is None or (isinstance(spec, float) and math.isnan(spec)) or spec == "":
        return None
    return json.loads(spec) if isinstance(spec, str) else dict(spec)


def ground_truth_guard(
    kind: str,
    box: Sequence[int],
    target_boxes: Sequence[Sequence[int]],
    *,
    shape: str | None = None,
    colour: str | None = None,
    spec: Mapping[str, Any] | str | None = None,
    scene: Any = None,
    margin: int = 4,
) -> dict[str, Any]:
    """``gt_ok`` 0 when the edit could change the ground truth, with the reason.

    Checks, in order: the edit box overlaps a target box dilated by ``margin``; the new object
    (add / replace) or the edited object (remove / replace, read from ``scene``) belongs to a
    category the question's spec depends on (``aot.bootstrap.categories.forbidden_for_spec``);
    with ``scene`` (the world's graph) and ``spec``, the edit applied to the graph must leave the
    exactly re-derived answer defined and unchanged.
    """
    from aot.bootstrap.categories import forbidden_for_spec
    from aot.world import Edit, apply_edit, try_answer_spec

    out: dict[str, Any] = {
        "gt_ok": 1.0,
        "gt_overlap": 0.0,
        "gt_forbidden": 0.0,
        "gt_answer_changed": 0.0,
        "gt_reason": "ok",
    }

    def fail(key: str, reason: str) -> dict[str, Any]:
        out.update({"gt_ok": 0.0, key: 1.0, "gt_reason": reason})
        return out

    box = tuple(int(v) for v in box)
    for t in target_boxes:
        x0, y0, x1, y1 = (int(v) for v in t)
        if _overlaps(box, (x0 - margin, y0 - margin, x1 + margin, y1 + margin)):
            return fail("gt_overlap", f"edit box {list(box)} overlaps target {[x0, y0, x1, y1]}")
    parsed = _spec(spec)
    edited_obj = None
    if scene is not None and kind in ("remove", "replace"):
        inside = [
            o
            for o in scene.objects
            if box[0] <= o.box[0]
            and box[1] <= o.box[1]
            and o.box[2] <= box[2]
            and o.box[3] <= box[3]
        ]
        edited_obj = inside[0] if len(inside) == 1 else None
    if parsed is not None:
        forbidden = forbidden_for_spec(parsed)
        if kind in ("add", "replace") and shape and colour and forbidden.blocks(colour, shape):
            return fail("gt_forbidden", f"a new {colour} {shape} is a category the question uses")
        if edited_obj is not None and forbidden.blocks(edited_obj.color, edited_obj.shape):
            return fail(
                "gt_forbidden",
                f"{kind} of a {edited_obj.color} {edited_obj.shape}: a category the question uses",
            )
    if scene is not None and parsed is not None:
        before = try_answer_spec(scene, parsed)
        try:
            after = try_answer_spec(apply_edit(scene, Edit(kind, box, shape, colour)), parsed)
        except ValueError as err:
            return fail("gt_answer_changed", f"edit does not apply to the scene graph: {err}")
        if before is None or after != before:
            return fail("gt_answer_changed", f"answer {before!r} -> {after!r} after the edit")
    return out


def correct_rate(answers: Sequence[str], record: Mapping[str, Any], mode: str = "word") -> float:
    """Fraction of ``answers`` that are correct for the record (any answer format)."""
    if not len(answers):
        return float("nan")
    options = list(record["options"]) if record.get("options") is not None else []
    text = record.get("answer_text") if options else None
    hits = [is_correct(a, record["answer"], options, mode, text) for a in answers]
    return float(sum(hits) / len(hits))


def efficacy_reward(
    edited_answers: Sequence[str],
    record: Mapping[str, Any],
    clean_answers: Sequence[str] | None = None,
    *,
    mode: str = "word",
    graded: bool = False,
    require_clean_correct: bool = True,
    clean_min: float = 1.0,
) -> dict[str, float]:
    """Efficacy of one edit from the frozen Defender's answers (K each, e.g. at temperature 1).

    ``all_wrong`` is 1 when every edited answer is wrong; ``efficacy`` is that (or the fraction
    wrong when ``graded``) times ``clean_ok``: with ``require_clean_correct`` the clean image's
    correct rate must reach ``clean_min`` so the failure is the edit's doing.
    """
    wrong = 1.0 - correct_rate(edited_answers, record, mode)
    clean = correct_rate(clean_answers, record, mode) if clean_answers is not None else math.nan
    if require_clean_correct and clean_answers is None:
        raise ValueError("efficacy_reward: require_clean_correct needs the clean answers")
    clean_ok = float(clean >= clean_min) if require_clean_correct else 1.0
    all_wrong = float(wrong >= 1.0)
    return {
        "efficacy": (wrong if graded else all_wrong) * clean_ok,
        "edited_wrong_rate": wrong,
        "all_wrong": all_wrong,
        "clean_correct_rate": clean,
        "clean_ok": clean_ok,
    }


def edit_validity(
    edited: Any,
    reference: Any,
    box: Sequence[int],
    kind: str,
    shape: str | None = None,
    colour: str | None = None,
    *,
    checks: Sequence[str] = VALIDITY_CHECKS,
    remove_tol: float = 0.1,
) -> dict[str, float]:
    """Is the edit what it claims? ``reference`` is what the box held before the new object:
    the clean image for add, the background behind the removed object for remove / replace.

    add / replace: the world's colour test and shape test (``aot.attacker.quality``) of the
    pixels that changed against ``reference``; remove: at most ``remove_tol`` of the box's pixels
    differ visibly (``CHANGE_THRESHOLD``) from the background. ``valid`` needs every check in
    ``checks`` (remove always uses the residual).
    """
    from aot.attacker.quality import changed_pixels, colour_match, shape_match

    if kind == "remove":
        residual = float(changed_pixels(edited, reference, box).mean())
        ok = residual <= remove_tol
        return {
            "valid": float(ok),
            "colour_ok": math.nan,
            "shape_ok": math.nan,
            "residual": residual,
        }
    if shape is None or colour is None:
        raise ValueError(f"edit_validity: a {kind!r} edit needs its shape and colour")
    colour_ok = colour_match(edited, reference, box, colour)
    shape_ok = shape_match(edited, reference, box, shape)
    need = {"colour": colour_ok, "shape": shape_ok}
    ok = all(need[c] for c in checks)
    return {
        "valid": float(ok),
        "colour_ok": float(colour_ok),
        "shape_ok": float(shape_ok),
        "residual": math.nan,
    }


def judge_question(kind: str, shape: str, colour: str) -> tuple[str, str]:
    """The Defender-as-judge question for one edit and the answer that makes the edit valid.

    add / replace: the planned object must be there ("Is there a red star in the image?" ->
    Yes); remove: the removed object must be gone (the same question about it -> No).
    """
    from aot.world.schema import NO, YES

    if kind not in ("add", "remove", "replace"):
        raise ValueError(f"judge_question: unknown edit kind {kind!r}")
    article = "an" if colour[:1] in "aeiou" else "a"
    question = f"Is there {article} {colour} {shape} in the image?"
    return question, NO if kind == "remove" else YES


def judge_crop(
    edited: Any, box: Sequence[int], context: int = 8, min_side: int = 112
) -> Image.Image:
    """What the judge sees: the edit box and ``context`` px around it (clipped to the image),
    upscaled so its short side is at least ``min_side`` (a 24-px crop would reach a VLM's
    processor as a few patches)."""
    a = _arr(edited)
    x0, y0, x1, y1 = _clip(box, a.shape[1], a.shape[0], context)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"judge_crop: box {list(box)} lies outside the {a.shape[1]}x{a.shape[0]} image"
        )
    crop = Image.fromarray(np.ascontiguousarray(a[y0:y1, x0:x1]).astype(np.uint8), "RGB")
    scale = max(1.0, min_side / min(crop.size))
    if scale > 1.0:
        crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.BICUBIC)
    return crop


def judged_validity(answer: str, expected: str, mode: str = "word") -> dict[str, float]:
    """``valid`` 1 when the judge's (greedy) answer is ``expected``; ``judge_parsed`` 0 when the
    answer was no Yes/No at all (it then counts as invalid: the judge could not confirm it)."""
    from aot.world.schema import NO, YES

    said_yes = is_correct(answer, YES, [], mode, None)
    said_no = is_correct(answer, NO, [], mode, None)
    return {
        "valid": float(said_yes if expected == YES else said_no),
        "judge_parsed": float(said_yes or said_no),
    }


# An edit whose visibly changed pixels (see `aot.attacker.quality.CHANGE_THRESHOLD`) cover less
# than this share of its box, although its pixels did change, is an imperceptible perturbation.
IMPERCEPTIBLE_SHARE = 0.05


def imperceptibility(clean: Any, edited: Any, box: Sequence[int]) -> dict[str, float]:
    """Is the edit an imperceptible perturbation rather than a visible object edit?

    The paper lists such perturbations among the Attacker's strategies. They are reported as
    their own edit type (`imperceptible`, with the visible share), never rewarded on their own:
    the validity check still decides whether the edit counts.
    """
    from aot.attacker.quality import changed_pixels

    x0, y0, x1, y1 = (int(v) for v in box)
    before = np.asarray(_arr(clean)[y0:y1, x0:x1], dtype=float)
    after = np.asarray(_arr(edited)[y0:y1, x0:x1], dtype=float)
    visible = float(changed_pixels(edited, clean, box).mean()) if before.size else 0.0
    changed = before.size > 0 and float(np.abs(after - before).mean()) > 0.5
    return {"imperceptible": float(changed and visible < IMPERCEPTIBLE_SHARE), "visible": visible}


SSIM_WINDOW = 7  # scikit-image's default window side


def _outside(shape: Sequence[int], boxes: Sequence[Sequence[int]], margin: int) -> np.ndarray:
    keep = np.ones(tuple(shape[:2]), dtype=bool)
    for box in boxes:
        x0, y0, x1, y1 = _clip(box, shape[1], shape[0], margin)
        keep[y0:y1, x0:x1] = False
    return keep


def outside_similarity(
    clean: Any, edited: Any, exclude_boxes: Sequence[Sequence[int]], margin: int = 3
) -> dict[str, float]:
    """Mean SSIM over the pixels outside the edit boxes dilated by ``margin``: 1 when the rest
    of the scene is untouched, lower when a whole-image editor redraws it. The default margin is
    half of the 7 px SSIM window, whose values next to a box see the box's pixels.

    Untouched means every pixel outside the (undilated) boxes is unchanged and ``margin`` is at
    least half the window, so no window that is scored sees a changed pixel: then the value is
    exactly 1 and the SSIM map is not computed. That is the paste-back box editor's every edit,
    and the map was a sixth of a default round's time outside the models (5 of 33 s, 1336
    edits); scikit-image would have returned 1 give or take 1e-15 (its running-sum filters).
    """
    a, b = _arr(clean), _arr(edited)
    keep = _outside(a.shape, exclude_boxes, margin)
    if not keep.any():
        return {"outside_ssim": 1.0}
    if margin >= SSIM_WINDOW // 2 and a.shape == b.shape:
        changed = a != b  # then one 2-D mask, not two masked copies of the images
        if changed.ndim == 3:
            changed = changed.any(axis=-1)
        if not changed[_outside(a.shape, exclude_boxes, 0)].any():
            return {"outside_ssim": 1.0}
    from skimage.metrics import structural_similarity

    _, ssim_map = structural_similarity(
        a, b, channel_axis=-1, data_range=255, full=True, win_size=SSIM_WINDOW
    )
    return {"outside_ssim": float(ssim_map.mean(axis=-1)[keep].mean())}


@dataclass(frozen=True)
class AttackRewardConfig:
    """Every part of the Attacker's reward (Kedro ``attacker.flow_grpo.reward.*``)."""

    ssim_threshold: float = 0.9
    ssim_margin: int = 2
    target_margin: int = 4
    exact_guard: bool = True
    k: int = 3
    temperature: float = 1.0
    graded: bool = False
    # 1 - the Defender's probability of the right answer (teacher-forced) as efficacy: dense
    # where K sampled answers are mostly all right and give a group no spread.
    confidence: bool = False
    require_clean_correct: bool = True
    clean_min: float = 1.0
    answer_mode: str = "word"
    max_new_tokens: int = 12
    validity_mode: str = "gate"
    validity_judge: str = "world"
    judge_context: int = 8
    judge_min_side: int = 112
    validity_checks: tuple[str, ...] = VALIDITY_CHECKS
    validity_weight: float = 0.0
    remove_tol: float = 0.1
    fidelity_weight: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        owner = "AttackRewardConfig"

        def number(name: str, low: float, high: float, integer: bool = False) -> None:
            v = getattr(self, name)
            kind = int if integer else int | float
            if isinstance(v, bool) or not isinstance(v, kind) or not low <= v <= high:
                what = "an integer" if integer else "a number"
                raise ValueError(f"{owner}.{name} must be {what} in [{low}, {high}], got {v!r}")

        number("ssim_threshold", -1.0, 1.0)
        number("ssim_margin", 0, math.inf, integer=True)
        number("target_margin", 0, math.inf, integer=True)
        number("k", 1, math.inf, integer=True)
        number("temperature", 0.0, math.inf)
        number("clean_min", 0.0, 1.0)
        number("max_new_tokens", 1, math.inf, integer=True)
        number("validity_weight", 0.0, math.inf)
        number("remove_tol", 0.0, 1.0)
        number("judge_context", 0, math.inf, integer=True)
        number("judge_min_side", 1, math.inf, integer=True)
        number("fidelity_weight", 0.0, math.inf)
        for name in ("exact_guard", "graded", "confidence", "require_clean_correct"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{owner}.{name} must be a bool, got {getattr(self, name)!r}")
        if self.k > 1 and self.temperature <= 0:
            raise ValueError(f"{owner}.temperature must be > 0 when k > 1 (greedy repeats)")
        if self.answer_mode not in ("word", "letter"):
            raise ValueError(f"{owner}.answer_mode must be 'word' or 'letter'")
        if self.validity_mode not in VALIDITY_MODES:
            raise ValueError(f"{owner}.validity_mode must be one of {VALIDITY_MODES}")
        if self.validity_judge not in VALIDITY_JUDGES:
            raise ValueError(f"{owner}.validity_judge must be one of {VALIDITY_JUDGES}")
        bad = [c for c in self.validity_checks if c not in VALIDITY_CHECKS]
        if not isinstance(self.validity_checks, tuple) or bad:
            raise ValueError(f"{owner}.validity_checks must be a tuple from {VALIDITY_CHECKS}")

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> AttackRewardConfig:
        params = dict(params or {})
        reject_unknown("AttackRewardConfig", cls, params)
        if isinstance(params.get("validity_checks"), list):
            params["validity_checks"] = tuple(params["validity_checks"])
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def composite_reward(parts: Mapping[str, float], config: AttackRewardConfig) -> dict[str, float]:
    """``reward`` from the parts (keys of the functions above; missing optional parts count as
    passing): ``gate x gt_ok x [valid] x efficacy + validity_weight x gate x gt_ok x valid +
    fidelity_weight x outside_ssim``."""
    integrity = float(parts.get("gate", 1.0)) * float(parts.get("gt_ok", 1.0))
    valid = float(parts.get("valid", 1.0))
    core = integrity * float(parts.get("efficacy", 0.0))
    if config.validity_mode == "gate":
        core *= valid
    bonus = config.validity_weight * integrity * valid
    fidelity = config.fidelity_weight * float(parts.get("outside_ssim", 1.0))
    return {"reward": core + bonus + fidelity, "reward_core": core}
