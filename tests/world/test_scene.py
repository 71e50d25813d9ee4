"""Scene sampling, painting, backgrounds and configuration of aot.world."""

import json
from itertools import combinations

import numpy as np
import pytest

from aot.world import (
    BACKGROUND_NAMES,
    COLORS,
    PHOTOS,
    SHAPES,
    TEXTURES,
    Background,
    Scene,
    WorldConfig,
    render_background,
    sample_scene,
    shape_mask,
)
from aot.world.scene import load_skimage_rgb


def _scenes(n: int, seed: int = 0, **cfg) -> list[Scene]:
    rng = np.random.default_rng(seed)
    world = WorldConfig(**cfg)
    return [sample_scene(rng, world, f"s{i}") for i in range(n)]


def _gap(a, b) -> int:
    """Largest empty-pixel gap between two boxes along either axis (negative if they overlap)."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


@pytest.mark.parametrize("kind", ["plain", "textured", "photo"])
def test_objects_in_bounds_and_never_overlap(kind):
    cfg = WorldConfig(backgrounds={kind: 1.0})
    scenes = _scenes(67, seed=1, backgrounds={kind: 1.0})
    for scene in scenes:
        assert scene.background.kind == kind
        assert cfg.min_objects <= len(scene.objects) <= cfg.max_objects
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= scene.width and 0 <= y0 < y1 <= scene.height
        for a, b in combinations(scene.objects, 2):
            assert _gap(a.box, b.box) >= cfg.min_gap, (scene.scene_id, a, b)


def test_crowded_config_places_fewer_objects_without_hanging():
    scenes = _scenes(5, min_objects=30, max_objects=30, sizes=("large",))
    for scene in scenes:
        assert 1 <= len(scene.objects) < 30
        for a, b in combinations(scene.objects, 2):
            assert _gap(a.box, b.box) >= 2


def test_mask_pixels_have_exact_colour_and_bbox_equals_box():
    for scene in _scenes(40, seed=2):
        img = np.asarray(scene.render())
        assert img.shape == (scene.height, scene.width, 3) and img.dtype == np.uint8
        union = np.zeros((scene.height, scene.width), dtype=int)
        for o in scene.objects:
            mask = scene.object_mask(o.object_id)
            union += mask
            assert (img[mask] == COLORS[o.color]).all()
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == o.box
        assert union.max() <= 1


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_mask_touches_all_four_sides(shape):
    for w in range(3, 48):
        for h in (w, w + 3):
            m = shape_mask(shape, w, h)
            assert m.shape == (h, w)
            assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any(), (w, h)


def test_shapes_are_distinct_at_small_size():
    masks = {s: shape_mask(s, 16, 16) for s in SHAPES}
    for a, b in combinations(SHAPES, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.9, (a, b, iou)


def test_colors_are_well_separated():
    for a, b in combinations(COLORS.values(), 2):
        assert np.linalg.norm(np.subtract(a, b)) > 90


def test_to_dict_round_trip_through_json():
    for scene in _scenes(20, seed=3):
        back = Scene.from_dict(json.loads(json.dumps(scene.to_dict())))
        assert back == scene
        assert back.render().tobytes() == scene.render().tobytes()


def test_render_and_sampling_are_deterministic():
    a, b = _scenes(10, seed=4), _scenes(10, seed=4)
    assert a == b
    assert [s.render().tobytes() for s in a] == [s.render().tobytes() for s in b]
    c = _scenes(10, seed=5)
    assert a != c
    assert a[0].render().tobytes() != c[0].render().tobytes()


def test_object_mask_unknown_id_raises():
    scene = _scenes(1)[0]
    with pytest.raises(KeyError, match="99"):
        scene.object_mask(99)


@pytest.mark.parametrize(
    ("kind", "name"), [(k, n) for k, ns in BACKGROUND_NAMES.items() for n in ns]
)
def test_every_background_renders_at_configured_size(kind, name):
    for width, height in ((112, 112), (168, 112)):
        bg = render_background(Background(kind, name, seed=7), width, height)
        assert bg.shape == (height, width, 3) and bg.dtype == np.uint8
        if kind != "plain":
            assert bg.std() > 2.0
    other = render_background(Background(kind, name, seed=8), 112, 112)
    same = render_background(Background(kind, name, seed=7), 112, 112)
    assert (same == render_background(Background(kind, name, seed=7), 112, 112)).all()
    assert kind == "plain" or not (other == same).all()


@pytest.mark.parametrize(
    "name", PHOTOS + tuple(t for t in TEXTURES if t not in ("stripes", "noise"))
)
def test_listed_skimage_images_load_offline(name):
    img = load_skimage_rgb(name)
    assert img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 100


def test_background_strength_reduces_contrast():
    def std(strength: float) -> float:
        return float(
            render_background(Background("photo", "astronaut", 1, strength), 112, 112).std()
        )

    assert std(0.2) < std(0.5) < std(1.0)
    assert std(0.0) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 100}, "image_size"),
        ({"image_size": 0}, "image_size"),
        ({"colors": ("red", "pink")}, "pink"),
        ({"shapes": ("circle", "blob")}, "blob"),
        ({"sizes": ("huge",)}, "huge"),
        ({"backgrounds": {"video": 1.0}}, "video"),
        ({"backgrounds": {"plain": 0.0}}, "backgrounds"),
        ({"min_objects": 3, "max_objects": 2}, "max_objects"),
        ({"background_strength": 1.5}, "background_strength"),
        ({"min_gap": -1}, "min_gap"),
    ],
)
def test_world_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WorldConfig(**kwargs)


def test_world_config_from_dict():
    cfg = WorldConfig.from_dict({"image_size": 224, "colors": ["red", "blue"], "shapes": ["star"]})
    assert cfg.image_size == 224 and cfg.colors == ("red", "blue") and cfg.shapes == ("star",)
    with pytest.raises(ValueError, match="n_objetcs"):
        WorldConfig.from_dict({"image_size": 112, "n_objetcs": 3})
    with pytest.raises(ValueError, match="pink"):
        WorldConfig.from_dict({"colors": ["pink"]})


def test_sampling_respects_restricted_vocabulary():
    scenes = _scenes(30, colors=("red", "blue"), shapes=("star",), sizes=("small",))
    objects = [o for s in scenes for o in s.objects]
    assert {o.color for o in objects} == {"red", "blue"}
    assert {o.shape for o in objects} == {"star"} and {o.size for o in objects} == {"small"}
    assert {o.box[2] - o.box[0] for o in objects} == {16}
