"""The procedural 3D-Shapes-like world: the release's grid, images that depend on every factor
the way they should, deterministic, and an atomic on-disk cache."""
import colorsys

import numpy as np
import pytest

from episodes.sources.shapes3d import FACTOR_SIZES, reference_factor_values
from episodes.sources.shapes3d_procedural import ProceduralShapes3D, hue_to_rgb

BASE = np.array([2, 5, 8, 3, 0, 7])


def _rows(world, changes):
    idx = np.repeat(BASE[None], len(changes), 0)
    for k, (j, v) in enumerate(changes):
        if j is not None:
            idx[k, j] = v
    return world.rows_of(idx)


def test_hue_to_rgb_matches_colorsys():
    hues = np.linspace(0, 0.99, 23)
    ref = np.array([colorsys.hsv_to_rgb(h, 0.8, 1.0) for h in hues])
    np.testing.assert_allclose(hue_to_rgb(hues), ref, atol=1e-12)


def test_grid_and_factor_effects():
    world = ProceduralShapes3D(supersample=1)
    assert world.factor_sizes == FACTOR_SIZES and len(world) == 480000 and world.procedural
    for got, ref in zip(world.factor_values, reference_factor_values()):
        np.testing.assert_array_equal(got, ref)
    changes = [(None, 0), (0, 6), (1, 0), (2, 1), (3, 7), (4, 2), (5, 0)]
    imgs = world.images(_rows(world, changes)).astype(int)
    assert imgs.shape == (7, 64, 64, 3) and imgs.dtype == np.int64
    base = imgs[0]
    for k in range(1, 7):                                      # every factor changes the picture
        assert np.abs(imgs[k] - base).sum() > 0, changes[k]
    a, f, w = world.maps(BASE[3], BASE[4], BASE[5])
    obj, floor, wall = a > 0.05, (f > 0) & (a == 0) & (w == 0), (w > 0) & (a == 0) & (f == 0)
    assert 80 < obj.sum() < 1500 and floor.sum() > 500 and wall.sum() > 500
    # each hue moves only its own region; colour = map * rgb(hue)
    for k, (region, other) in zip((1, 2, 3), ((floor, ~(f > 0)), (wall, ~(w > 0)), (obj, ~(a > 0)))):
        changed = np.abs(imgs[k] - base).sum(-1) > 0
        assert changed[region].mean() > 0.9 and not changed[other].any()
    values = world.factor_values
    expected_floor = f[..., None] * hue_to_rgb(values[0][BASE[0]]) * 255
    np.testing.assert_allclose(base[floor], expected_floor[floor], atol=0.51)
    # the object grows with the scale
    assert (world.maps(7, BASE[4], BASE[5])[0] > 0.05).sum() > 1.5 * (world.maps(0, BASE[4], BASE[5])[0] > 0.05).sum()


def test_deterministic_and_cached(tmp_path):
    rows = np.array([5, 479999, 5, 1200])
    fresh = ProceduralShapes3D(supersample=1).images(rows)
    cached_world = ProceduralShapes3D(cache_dir=tmp_path, supersample=1)
    np.testing.assert_array_equal(cached_world.images(rows), fresh)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("shapes3d-procedural-v2-ss1-3-") and files[0].endswith(".npy")
    first = (tmp_path / files[0]).stat().st_mtime_ns
    again = ProceduralShapes3D(cache_dir=tmp_path, supersample=1).images(np.array([5, 1200, 479999]))
    assert isinstance(again, np.memmap) and (tmp_path / files[0]).stat().st_mtime_ns == first
    np.testing.assert_array_equal(again, fresh[[0, 3, 1]])
    (tmp_path / files[0]).write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError):
        ProceduralShapes3D(cache_dir=tmp_path, supersample=1).images(np.array([5, 1200, 479999]))
