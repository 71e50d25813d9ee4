"""The diffusion filler on a tiny random inpainting pipeline (built, saved, loaded from disk).

With ``paste_back`` (the default) pixels outside the mask are restored EXACTLY; without it they
only come back through the VAE and differ, which is why paste-back is the default.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aot.bootstrap import (
    DiffusersFiller,
    ProceduralFiller,
    build_tiny_inpaint_pipeline,
    extend_scene,
    make_filler,
    run_checks,
)

PARAMS = {"num_inference_steps": 2, "guidance_scale": 1.0, "device": "cpu"}


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_inpaint_pipeline(tmp_path_factory.mktemp("inpaint") / "tiny")


@pytest.fixture(scope="module")
def filler(pipeline_dir: Path) -> DiffusersFiller:
    built = make_filler({"kind": "diffusers", "path": str(pipeline_dir), **PARAMS})
    assert isinstance(built, DiffusersFiller) and not built.exact
    return built


def _image(w: int = 84, h: int = 70) -> Image.Image:
    """An odd-sized image (not a multiple of the latent stride): padding must be undone."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_tiny_pipeline_saves_a_loadable_folder(pipeline_dir: Path) -> None:
    assert (pipeline_dir / "model_index.json").exists()
    assert list(pipeline_dir.glob("unet/*.safetensors"))


def test_fill_box_changes_only_the_box(filler: DiffusersFiller) -> None:
    image = _image()
    out = filler.fill_box(image, (10, 12, 34, 30), "small red triangle", np.random.default_rng(0))
    assert out.size == image.size and out.mode == "RGB"
    before, after = np.asarray(image), np.asarray(out)
    box = np.zeros(before.shape[:2], bool)
    box[12:30, 10:34] = True
    assert np.array_equal(before[~box], after[~box])
    assert (before[box] != after[box]).mean() > 0.5


def test_fill_margins_keeps_the_known_region(filler: DiffusersFiller) -> None:
    image = _image()
    known = np.zeros((70, 84), bool)
    known[20:50, 20:60] = True
    out = filler.fill_margins(image, known, np.random.default_rng(1))
    before, after = np.asarray(image), np.asarray(out)
    assert out.size == image.size
    assert np.array_equal(before[known], after[known])
    assert (before[~known] != after[~known]).mean() > 0.5


def test_without_paste_back_the_known_region_only_roughly_survives(pipeline_dir: Path) -> None:
    raw = DiffusersFiller(pipeline_dir, paste_back=False, resolution=64, **PARAMS)
    image = _image()
    out = raw.fill_box(image, (10, 12, 34, 30), "blue star", np.random.default_rng(0))
    assert out.size == image.size
    assert not np.array_equal(np.asarray(image)[40:], np.asarray(out)[40:])


def test_extension_with_diffusion_keeps_only_source_objects(source, pipeline_dir) -> None:  # noqa: ANN001
    scenes, records, images = source
    scene = scenes[0]
    specs = records.loc[records["scene_id"] == scene.scene_id, "spec"].tolist()
    small = DiffusersFiller(pipeline_dir, resolution=56, **PARAMS)  # attention is quadratic
    ext = extend_scene(
        scene, images[scene.scene_id], 1.5, np.random.default_rng(0), small, specs=specs
    )
    assert ext.image.size == (168, 168) and not ext.exact and ext.clutter_ids == ()
    assert len(ext.scene.objects) == len(scene.objects)
    mine = records[records["scene_id"] == scene.scene_id].copy()
    dx, dy = ext.offset
    mine["target_boxes"] = [
        [[b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy] for b in boxes]
        for boxes in mine["target_boxes"]
    ]
    result = run_checks(ext, mine)
    assert result["composition"]  # paste-back keeps target pixels exact
    assert isinstance(result["duplication"], bool)  # decided by the detector, not the graph


def test_missing_pipeline_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_pipeline"
    with pytest.raises(FileNotFoundError, match="no_such_pipeline"):
        DiffusersFiller(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        make_filler({"kind": "diffusers", "path": tmp_path / "empty"})


def test_make_filler_rejects_unknown_kinds_and_keys() -> None:
    with pytest.raises(ValueError, match="'sdxl'"):
        make_filler({"kind": "sdxl"})
    with pytest.raises(ValueError, match="bad parameters"):
        make_filler({"kind": "procedural", "colour": "red"})
    assert isinstance(
        make_filler({"kind": "procedural", "world": {"image_size": 56}}), ProceduralFiller
    )
