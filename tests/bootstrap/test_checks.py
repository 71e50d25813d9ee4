"""Stage-1 checks: each fails on a crafted bad scene and passes on good ones."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from aot.bootstrap import (
    CheckConfig,
    ExtendedScene,
    check_scenes,
    detect_objects,
    run_checks,
    summarize_checks,
)
from aot.world import (
    SHAPES,
    Background,
    Scene,
    SceneObject,
    find_free_box,
    paint_object,
    render_background,
)


def _records_of(records, scene_id):  # noqa: ANN001, ANN202
    return records[records["scene_id"] == scene_id].to_dict("records")


def _textured(extended) -> ExtendedScene:  # noqa: ANN001
    """An extended scene whose source background is textured (the hard case for realism)."""
    return next(e for e in extended[0] if e.scene.background.kind != "plain")


def _free_margin_box(ext: ExtendedScene, side: int) -> tuple[int, int, int, int]:
    """A box in the margins clear of every object (the source counts as one big object)."""
    block = SceneObject(-1, "square", "red", "large", ext.source_box)
    blocked = replace(ext.scene, objects=ext.scene.objects + (block,))
    box = find_free_box(blocked, side, np.random.default_rng(0), gap=2, tries=2000)
    assert box is not None
    return box


def test_procedural_extensions_pass_every_check(extended) -> None:  # noqa: ANN001
    table = check_scenes(*extended)
    assert len(table) == len(extended[0])
    bad = table[~table["passed"]]
    assert bad.empty, bad.to_dict("records")
    assert summarize_checks(table) == {
        "composition": 1.0,
        "duplication": 1.0,
        "realism": 1.0,
        "passed": 1.0,
    }


def test_duplication_fails_on_a_clutter_object_of_a_target_category(extended) -> None:  # noqa: ANN001
    for ext in extended[0][:12]:
        records = _records_of(extended[1], ext.scene.scene_id)
        spec = json.loads(next(r for r in records if r["family"] == "count")["spec"])
        shape = spec["filter"].get("shape", "circle")
        color = spec["filter"].get("color", "red")
        box = _free_margin_box(ext, 16)
        new_id = max(o.object_id for o in ext.scene.objects) + 1
        dup = SceneObject(new_id, shape, color, "small", box)
        bad = replace(
            ext,
            image=paint_object(ext.image, box, shape, color),
            scene=replace(ext.scene, objects=ext.scene.objects + (dup,)),
            clutter_ids=ext.clutter_ids + (new_id,),
        )
        graph = run_checks(bad, records)
        seen = run_checks(bad, records, CheckConfig(use_detector=True))
        assert not graph["duplication"] and "duplicates" in graph["duplication_reason"]
        assert not seen["duplication"]
        assert run_checks(ext, records, CheckConfig(use_detector=True))["duplication"]
        assert graph["composition"] and not graph["passed"]


def test_composition_fails_on_a_shifted_paste(extended) -> None:  # noqa: ANN001
    ext = extended[0][0]
    records = _records_of(extended[1], ext.scene.scene_id)
    dx, dy = ext.offset
    shifted = ext.image.copy()
    shifted.paste(ext.source_image, (dx + 1, dy))
    result = run_checks(replace(ext, image=shifted), records)
    assert not result["composition"] and "pixels changed" in result["composition_reason"]
    assert not run_checks(replace(ext, image=shifted), records, CheckConfig(ssim_min=0.9))[
        "composition"
    ]


def test_composition_ssim_mode_tolerates_slight_noise_only(extended) -> None:  # noqa: ANN001
    ext = _textured(extended)
    records = _records_of(extended[1], ext.scene.scene_id)
    noise = np.random.default_rng(0).integers(-2, 3, size=(*ext.image.size[::-1], 3))
    noisy = np.clip(np.asarray(ext.image).astype(int) + noise, 0, 255).astype(np.uint8)
    bad = replace(ext, image=Image.fromarray(noisy))
    assert not run_checks(bad, records)["composition"]
    assert run_checks(bad, records, CheckConfig(ssim_min=0.8))["composition"]


def test_composition_fails_when_a_box_leaves_the_source(extended) -> None:  # noqa: ANN001
    ext = extended[0][0]
    records = _records_of(extended[1], ext.scene.scene_id)
    outside = [dict(r, target_boxes=[[0, 0, 5, 5]]) for r in records]
    if ext.offset == (0, 0):
        pytest.skip("source at the corner")
    assert not run_checks(ext, outside)["composition"]


def _with_margins(ext: ExtendedScene, margins: np.ndarray) -> ExtendedScene:
    arr = np.asarray(ext.image).copy()
    known = ext.known_mask()
    arr[~known] = margins[~known]
    return replace(ext, image=Image.fromarray(arr))


def test_realism_fails_on_a_constant_colour_margin(extended) -> None:  # noqa: ANN001
    ext = _textured(extended)
    flat = np.zeros_like(np.asarray(ext.image))
    flat[:] = np.asarray(ext.source_image).reshape(-1, 3).mean(0).astype(np.uint8)
    result = run_checks(_with_margins(ext, flat), [])
    assert not result["realism"] and "flat" in result["realism_reason"]


def test_realism_fails_on_a_hard_seam(extended) -> None:  # noqa: ANN001
    ext = _textured(extended)
    brighter = np.clip(np.asarray(ext.image).astype(int) + 35, 0, 255).astype(np.uint8)
    result = run_checks(_with_margins(ext, brighter), [])
    assert not result["realism"] and "seam" in result["realism_reason"]


def test_realism_fails_on_noise_and_passes_a_plain_scene_with_plain_margins(extended) -> None:  # noqa: ANN001
    ext = _textured(extended)
    noise = np.random.default_rng(1).integers(0, 256, size=np.asarray(ext.image).shape)
    assert not run_checks(_with_margins(ext, noise.astype(np.uint8)), [])["realism"]
    plain = next(e for e in extended[0] if e.scene.background.kind == "plain")
    assert run_checks(plain, [])["realism"]


def test_pass_rates_are_aggregated(extended) -> None:  # noqa: ANN001
    exts, records = extended
    broken = []
    for ext in exts[:4]:
        shifted = ext.image.copy()
        shifted.paste(ext.source_image, (ext.offset[0], ext.offset[1] + 1))
        broken.append(replace(ext, image=shifted))
    table = check_scenes(broken + list(exts[4:]), records)
    rates = summarize_checks(table)
    assert rates["composition"] == pytest.approx(1 - 4 / len(exts))
    assert rates["duplication"] == 1.0 and rates["passed"] <= rates["composition"]


def test_detector_finds_painted_objects_and_nothing_on_backgrounds() -> None:
    bg = Background("textured", "brick", 3, 0.5)
    scene = Scene("d", 112, 112, bg, ())
    image = Image.fromarray(np.asarray(render_background(bg, 112, 112)).copy())
    assert detect_objects(image) == []
    painted = []
    for i, shape in enumerate(SHAPES):
        box = (4 + (i % 4) * 27, 10 + (i // 4) * 40, 4 + (i % 4) * 27 + 20, 10 + (i // 4) * 40 + 20)
        color = ["red", "green", "blue", "yellow", "purple", "orange", "red"][i]
        image = paint_object(image, box, shape, color)
        painted.append((color, shape, box))
    found = detect_objects(image)
    assert sorted(found) == sorted(painted)
    left = np.zeros((112, 112), bool)
    left[:, :56] = True
    assert all(d.box[2] <= 56 for d in detect_objects(image, left))
    assert scene.objects == ()


def test_local_ssim_of_equal_crops_is_scikit_images_exact_one() -> None:
    """The shortcut for equal crops returns what scikit-image computes for them, bit for bit,
    on every window size `local_ssim` picks; unequal crops still go through scikit-image."""
    from skimage.metrics import structural_similarity

    from aot.bootstrap.checks import local_ssim

    rng = np.random.default_rng(0)
    for h, w in [(3, 3), (4, 9), (6, 5), (7, 7), (12, 30), (41, 17)]:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        win = min(7, min(h, w) if min(h, w) % 2 else min(h, w) - 1)
        full = structural_similarity(a, a.copy(), win_size=win, channel_axis=-1, data_range=255)
        assert full == 1.0 and local_ssim(a, a.copy()) == 1.0
        b = a.copy()
        b[h // 2, w // 2] = 255 - b[h // 2, w // 2]
        want = structural_similarity(a, b, win_size=win, channel_axis=-1, data_range=255)
        assert local_ssim(a, b) == float(want) < 1.0
    tiny = rng.integers(0, 256, (2, 5, 3), dtype=np.uint8)
    assert local_ssim(tiny, tiny.copy()) == 1.0
    assert local_ssim(tiny, 255 - tiny) == 0.0
