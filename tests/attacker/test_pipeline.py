"""BoxEditPipeline: diffusers save/load round trip, batching, outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from aot.attacker import AttackerConfig, BoxEditPipeline, build_box_edit_pipeline

BOXES = [(10, 10, 32, 32), (80, 5, 110, 35)]


def _edit(pipe: BoxEditPipeline, image: Image.Image, **kw: object) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return pipe([image, image], BOXES, ["red star", "remove"], 3, generator=gen, **kw)


def test_save_load_round_trip_is_bit_identical(
    default_pipe: BoxEditPipeline, image: Image.Image, tmp_path: Path
) -> None:
    default_pipe.save_pretrained(tmp_path)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    loaded = BoxEditPipeline.from_pretrained(tmp_path)
    assert loaded.config.crop_size == 32 and loaded.config.crop_scale == 1.5
    before = _edit(default_pipe, image, output_type="pt")
    after = _edit(loaded, image, output_type="pt")
    assert torch.equal(before, after)
    assert [a.tobytes() for a in _edit(loaded, image)] == [
        a.tobytes() for a in _edit(default_pipe, image)
    ]


def test_a_checkpoint_saved_from_a_loaded_one_holds_no_path(
    default_pipe: BoxEditPipeline, tmp_path: Path
) -> None:
    """A round's Attacker is loaded from the last one and saved again: its files must not
    depend on where the first folder was (DVC hashes them on every clone)."""
    default_pipe.save_pretrained(tmp_path / "a")
    for source, target in (("a", "b"), ("b", "elsewhere/c")):
        loaded = BoxEditPipeline.from_pretrained(tmp_path / source)
        loaded.save_pretrained(tmp_path / target)
        assert str(loaded.config._name_or_path) == str(tmp_path / source)  # kept in memory
    for name in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json"):
        texts = {(tmp_path / f / name).read_text() for f in ("a", "b", "elsewhere/c")}
        assert len(texts) == 1, name
        assert "_name_or_path" not in texts.pop()


def test_crop_config_survives_round_trip(tmp_path: Path) -> None:
    config = AttackerConfig(
        crop_size=16,
        crop_scale=2.0,
        block_out_channels=(8, 16),
        attention_head_dim=8,
        norm_num_groups=4,
    )
    build_box_edit_pipeline(config, seed=1).save_pretrained(tmp_path)
    loaded = BoxEditPipeline.from_pretrained(tmp_path)
    assert (loaded.config.crop_size, loaded.config.crop_scale) == (16, 2.0)
    assert loaded.unet.config.num_class_embeds == 44 and loaded.unet.config.in_channels == 7


def test_seed_fixes_weights(tiny_config: AttackerConfig) -> None:
    a, b, c = (build_box_edit_pipeline(tiny_config, seed=s).unet for s in (0, 0, 1))
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_generator_controls_samples(tiny_pipe: BoxEditPipeline, image: Image.Image) -> None:
    a = _edit(tiny_pipe, image, output_type="pt")
    b = tiny_pipe(
        [image, image],
        BOXES,
        ["red star", "remove"],
        3,
        generator=torch.Generator().manual_seed(8),
        output_type="pt",
    )
    assert a.shape == (2, 3, 112, 112) and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, b)


def test_broadcast_and_guidance(tiny_pipe: BoxEditPipeline, image: Image.Image) -> None:
    out = tiny_pipe(
        image, (10, 10, 30, 30), ["red star", "blue circle", "remove"], 2, guidance_scale=2.0
    )
    assert len(out) == 3 and all(o.size == image.size for o in out)


def test_bad_arguments(tiny_pipe: BoxEditPipeline, image: Image.Image) -> None:
    with pytest.raises(ValueError, match="batch sizes"):
        tiny_pipe([image] * 2, BOXES * 2, ["red star"] * 3)
    with pytest.raises(ValueError, match="output_type"):
        tiny_pipe(image, BOXES[0], "red star", output_type="np")
    with pytest.raises(ValueError, match="pink"):
        tiny_pipe(image, BOXES[0], "a pink star")
