"""A procedural 3D-Shapes-like world: a stand-in for the released dataset, not the dataset.

It has the release's six factors with the same numbers of values and the same row
order (:mod:`episodes.sources.shapes3d`): floor hue (10), wall hue (10), object hue
(10), object scale (8, ``0.75..1.25``), shape (4: cube, cylinder, sphere, capsule) and
orientation (15, ``-30..30`` degrees, a rotation of the object and of the back wall
about the vertical axis).  The images are 64 x 64 RGB renderings of a room (floor +
back wall) with one object, made with numpy:

* geometry (per scale, shape, orientation: 480 combinations) is ray cast once:
  sphere tracing of the object's signed distance function from a perspective camera
  above the floor, Lambert shading with ambient light, a soft shadow of the object on
  the floor and a 2 x 2 supersampling;
* each combination gives three non-negative maps ``A, F, W`` (64 x 64) with the
  pixel colour linear in the three hue colours:

      image = A * rgb(object_hue) + F * rgb(floor_hue) + W * rgb(wall_hue),

  ``rgb(h)`` = HSV ``(h, 0.8, 1)`` to RGB, so a batch of images is three weighted sums.

Rendering the whole grid (480000 images, 5.9 GB) takes minutes: 170 s wall (one
process, written to the cache) on 2 cores shared with other jobs (load average ~2.5);
under heavier load (~10) the 480 geometries took 76 s and the colouring about 1 ms per
image.  With
``cache_dir``, every set of rows asked for is written once to
``cache_dir/shapes3d-procedural-v1-<n>-<hash>.npy`` (atomic write) and later read
back memory-mapped.

Differences from the release that matter: the camera, lights, object sizes and the
background layout are ours (so pixels differ), the capsule lies horizontally (its
orientation is visible), and there is no rendering noise.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np

from ..atomic import atomic_write
from .shapes3d import FACTOR_SIZES, IMAGE_SHAPE, Shapes3DWorld, reference_factor_values

__all__ = ["ProceduralShapes3D", "SHAPE_NAMES", "hue_to_rgb", "CACHE_VERSION"]

SHAPE_NAMES = ("cube", "cylinder", "sphere", "capsule")
CACHE_VERSION = "v2"
_RES = 64
_EYE = np.array([0.0, 1.9, -4.0])
_TARGET = np.array([0.0, 0.75, 0.0])
_FOCAL = 2.2                         # focal length in units of the image half-width
_LIGHT = np.array([-0.45, 0.8, -0.4]) / np.linalg.norm([-0.45, 0.8, -0.4])
_WALL_DIST = 2.6                     # back wall: distance from the object's axis
_BASE_SIZE = 1.1                     # object size at scale 1


def hue_to_rgb(h, saturation: float = 0.8, value: float = 1.0) -> np.ndarray:
    """HSV ``(h, saturation, value)`` to RGB in [0, 1]; ``h`` (...,) in [0, 1) -> (..., 3)."""
    h = np.asarray(h, dtype=np.float64) % 1.0
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = value * (1 - saturation), value * (1 - saturation * f), value * (1 - saturation * (1 - f))
    v = np.full_like(h, value)
    i = i.astype(int) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def _rot_y(p: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    return np.stack([c * x - s * z, y, s * x + c * z], axis=-1)


def _sdf(p: np.ndarray, shape: int, size: float, angle: float) -> np.ndarray:
    """Signed distance to the object (resting on the floor y = 0) at points p (..., 3)."""
    r = size / 2
    q = _rot_y(p - np.array([0.0, r, 0.0]), -angle)        # object frame, centre at the origin
    if shape == 0:                                         # cube, half side r * 0.85
        d = np.abs(q) - r * 0.85
        return np.linalg.norm(np.maximum(d, 0.0), axis=-1) + np.minimum(d.max(-1), 0.0)
    if shape == 1:                                         # upright cylinder
        d = np.stack([np.hypot(q[..., 0], q[..., 2]) - r * 0.85, np.abs(q[..., 1]) - r], axis=-1)
        return np.linalg.norm(np.maximum(d, 0.0), axis=-1) + np.minimum(d.max(-1), 0.0)
    if shape == 2:                                         # sphere
        return np.linalg.norm(q, axis=-1) - r
    # capsule lying along the object's x axis (its orientation is visible)
    rad, half = r * 0.62, r * 0.75
    seg = np.stack([np.clip(q[..., 0], -half, half), np.zeros(q.shape[:-1]), np.zeros(q.shape[:-1])], axis=-1)
    return np.linalg.norm(q - seg - np.array([0.0, rad - r, 0.0]), axis=-1) - rad


def _camera_rays(supersample: int) -> Tuple[np.ndarray, np.ndarray]:
    n = _RES * supersample
    fwd = _TARGET - _EYE
    fwd /= np.linalg.norm(fwd)
    right = np.cross(np.array([0.0, 1.0, 0.0]), fwd)
    right /= np.linalg.norm(right)
    up = np.cross(fwd, right)
    u = (np.arange(n) + 0.5) / n * 2 - 1
    px, py = np.meshgrid(u, -u)                            # image row 0 at the top
    d = fwd * _FOCAL + px[..., None] * right + py[..., None] * up
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return np.broadcast_to(_EYE, d.shape).copy(), d


def _meets_ball(o: np.ndarray, d: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Rays ``o + t d`` (unit ``d``, ``t > 0``) that pass within ``radius`` of ``centre``."""
    oc = centre - o
    t = np.maximum((oc * d).sum(-1), 0.0)
    return np.linalg.norm(oc - d * t[..., None], axis=-1) <= radius


@lru_cache(maxsize=4)
def _background(orientation_deg: float, supersample: int):
    """Per-ray floor point (or None), floor mask and the floor / wall shading."""
    o, d = _camera_rays(supersample)
    theta = np.deg2rad(orientation_deg)
    normal = np.array([-np.sin(theta), 0.0, -np.cos(theta)])       # back wall faces the camera
    point = -normal * _WALL_DIST
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(d[..., 1] < 0, -o[..., 1] / d[..., 1], np.inf)
        denom = d @ normal
        t_wall = np.where(denom < 0, ((point - o) @ normal) / denom, np.inf)
    floor = t_floor < t_wall
    hit = o + d * np.where(floor, t_floor, t_wall)[..., None]
    floor_shade = 0.55 + 0.45 * np.exp(-0.08 * np.linalg.norm(hit[..., [0, 2]] - _EYE[[0, 2]], axis=-1))
    wall_shade = 0.78 + 0.12 * np.clip(hit[..., 1] / 4.0, 0, 1) - 0.05 * np.tanh(hit[..., 0] / 3)
    return o, d, floor, hit, floor_shade, wall_shade


def _geometry(scale: float, shape: int, orientation_deg: float, supersample: int = 2,
              steps: int = 40) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The maps (A, F, W), float32 (64, 64) each, of one (scale, shape, orientation)."""
    o, d, floor, bg_hit, floor_shade, wall_shade = _background(float(orientation_deg), supersample)
    size, angle = _BASE_SIZE * scale, np.deg2rad(orientation_deg)
    centre, bound = np.array([0.0, size / 2, 0.0]), 0.8 * size        # the object lies inside this ball
    n_rays = d.shape[:-1]
    # sphere tracing of the object, only for the rays that meet its bounding ball
    near = _meets_ball(o, d, centre, bound)
    od, dd = o[near], d[near]
    t = np.full(len(dd), 2.5)
    for _ in range(steps):
        t = t + _sdf(od + dd * t[:, None], shape, size, angle)
    p = od + dd * t[:, None]
    hit_near = (np.abs(_sdf(p, shape, size, angle)) < 2e-3) & (t < np.linalg.norm(bg_hit[near] - od, axis=-1))
    eps = 1e-3
    grad = np.stack([_sdf(p + e, shape, size, angle) - _sdf(p - e, shape, size, angle)
                     for e in np.eye(3) * eps], axis=-1)
    normal = grad / np.maximum(np.linalg.norm(grad, axis=-1, keepdims=True), 1e-9)
    hit, obj_shade = np.zeros(n_rays, bool), np.zeros(n_rays)
    hit[near] = hit_near
    obj_shade[near] = 0.3 + 0.7 * np.clip(normal @ _LIGHT, 0.0, 1.0)
    # soft shadow on the background: march from the floor / wall point towards the light,
    # only where that ray meets the bounding ball (elsewhere the object casts no shadow)
    lit = np.broadcast_to(_LIGHT, bg_hit.shape)
    dark = _meets_ball(bg_hit, lit, centre, bound * 1.3) & ~hit
    q = bg_hit[dark]
    shadow_dark = np.ones(len(q))
    s = np.full(len(q), 0.02)
    for _ in range(24):
        h = _sdf(q + _LIGHT * s[:, None], shape, size, angle)
        shadow_dark = np.minimum(shadow_dark, np.clip(6.0 * h / s, 0.0, 1.0))
        s = s + np.clip(h, 0.03, 0.4)
    shadow = np.ones(n_rays)
    shadow[dark] = shadow_dark
    shadow = 0.45 + 0.55 * shadow
    a = np.where(hit, obj_shade, 0.0)
    f = np.where(~hit & floor, shadow * floor_shade, 0.0)
    w = np.where(~hit & ~floor, shadow * wall_shade, 0.0)
    pool = lambda m: m.reshape(_RES, supersample, _RES, supersample).mean((1, 3)).astype(np.float32)  # noqa: E731
    return pool(a), pool(f), pool(w)


class ProceduralShapes3D(Shapes3DWorld):
    """The procedural stand-in (see module doc).  ``cache_dir``: where rendered row sets
    are kept (``None``: render every time); ``supersample``: rays per pixel side."""

    name = "3dshapes-procedural"
    procedural = True

    def __init__(self, cache_dir: Optional[os.PathLike] = None, supersample: int = 2, progress: bool = False):
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        self.factor_values = reference_factor_values(FACTOR_SIZES)
        self.cache_dir = None if cache_dir is None else os.path.expanduser(os.fspath(cache_dir))
        self.supersample = int(supersample)
        self.progress = progress
        self._maps = {}

    # -- geometry ----------------------------------------------------------------------
    def maps(self, scale_index: int, shape_index: int, orientation_index: int) -> np.ndarray:
        """float32 (3, 64, 64): the maps A (object), F (floor), W (wall) of one combination."""
        key = (int(scale_index), int(shape_index), int(orientation_index))
        if key not in self._maps:
            sc, sh, orient = self.factor_values[3], self.factor_values[4], self.factor_values[5]
            self._maps[key] = np.stack(_geometry(float(sc[key[0]]), int(sh[key[1]]), float(orient[key[2]]),
                                                 self.supersample))
        return self._maps[key]

    def render(self, rows, chunk: int = 2048) -> np.ndarray:
        """uint8 (k, 64, 64, 3) renderings of ``rows`` (no cache)."""
        out = np.empty((len(rows),) + IMAGE_SHAPE, np.uint8)
        for start in range(0, len(rows), chunk):
            out[start:start + chunk] = self._render_chunk(np.asarray(rows[start:start + chunk]))
        return out

    def _render_chunk(self, rows: np.ndarray) -> np.ndarray:
        idx = self.factor_indices(rows)
        combos, inverse = np.unique(idx[:, 3:], axis=0, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
        maps = np.stack([self.maps(*c) for c in combos]).reshape(len(combos), 3, -1)      # (c, 3, 4096)
        colours = np.stack([hue_to_rgb(self.factor_values[j][idx[:, j]]) for j in (2, 0, 1)], axis=1)  # (k, 3, 3)
        img = np.matmul(colours.transpose(0, 2, 1).astype(np.float32) * 255.0, maps[inverse])   # (k, rgb, 4096)
        img = img.reshape(len(rows), 3, _RES, _RES).transpose(0, 2, 3, 1)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    # -- cache ---------------------------------------------------------------------------
    def cache_path(self, sorted_rows: np.ndarray) -> str:
        digest = hashlib.sha1(np.ascontiguousarray(sorted_rows, dtype=np.int64).tobytes()).hexdigest()[:16]
        return os.path.join(self.cache_dir, f"shapes3d-procedural-{CACHE_VERSION}-ss{self.supersample}-"
                                            f"{len(sorted_rows)}-{digest}.npy")

    def _read(self, sorted_rows: np.ndarray) -> np.ndarray:
        if self.cache_dir is None:
            return self.render(sorted_rows)
        path = self.cache_path(sorted_rows)
        if not os.path.isfile(path):
            self._write_cache(path, sorted_rows)
        arr = np.load(path, mmap_mode="r")
        if arr.shape != (len(sorted_rows),) + IMAGE_SHAPE or arr.dtype != np.uint8:
            raise ValueError(f"{path}: cached images have {arr.dtype} {arr.shape}, expected uint8 "
                             f"{(len(sorted_rows),) + IMAGE_SHAPE}; delete the file to render again")
        return arr

    def _write_cache(self, path: str, sorted_rows: np.ndarray, chunk: int = 4096) -> None:
        from tqdm import tqdm

        def write(f):
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": (len(sorted_rows),) + IMAGE_SHAPE})
            starts = range(0, len(sorted_rows), chunk)
            for start in tqdm(starts, desc="rendering 3D shapes (procedural)", unit="chunk",
                              disable=True if (not self.progress or len(starts) < 4) else None, leave=False):
                f.write(self._render_chunk(sorted_rows[start:start + chunk]).tobytes())

        atomic_write(path, write)

    def images(self, rows) -> np.ndarray:
        """uint8 (k, 64, 64, 3); a sorted, repeat-free ``rows`` with a cache returns the
        memory-mapped cache file itself (read-only)."""
        rows = self._check_rows(rows)
        if rows.size and self.cache_dir is not None and np.all(np.diff(rows) > 0):
            return self._read(rows)
        return super().images(rows)
