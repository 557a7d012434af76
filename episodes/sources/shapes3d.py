"""3D Shapes (Burgess & Kim, 2018): the ``3dshapes.h5`` file as distributed, read lazily.

Layout of the file (DeepMind's release):

* ``images``: uint8 (480000, 64, 64, 3);
* ``labels``: float64 (480000, 6), the factor *values* of each image, in the order
  ``floor_hue, wall_hue, object_hue, scale, shape, orientation`` with 10, 10, 10, 8,
  4 and 15 values (hues in ``[0, 1)``, scale in ``[0.75, 1.25]``, shape ``0..3``,
  orientation in ``[-30, 30]`` degrees).

Rows enumerate the factor grid in C order (orientation varies fastest): the image
with factor indices ``(i_1, ..., i_6)`` is row ``ravel_multi_index(i, sizes)``,
``sum_k i_k prod_{j > k} size_j``.  :class:`Shapes3DH5` reads the labels (23 MB),
infers each factor's sorted values, checks that every row follows this closed form,
and reads only the image rows asked for.

Every 3D-Shapes-like world (this file, or :mod:`episodes.sources.shapes3d_procedural`)
exposes the same interface, :class:`Shapes3DWorld`:

* ``factor_names``, ``factor_sizes`` and ``factor_values`` (one sorted array per factor);
* ``len(world)`` rows, one per grid point;
* ``images(rows)`` -> uint8 (k, 64, 64, 3); ``factor_indices(rows)`` -> int64 (k, 6);
  ``factor_array(rows)`` -> float64 (k, 6) values; ``rows_of(factor_indices)`` -> rows.

This module never imports ``metasparse``; errors are ``FileNotFoundError`` /
``ValueError`` with one line naming the file and what was expected.
"""
from __future__ import annotations

import os
from typing import Sequence, Tuple

import numpy as np

__all__ = ["FACTOR_NAMES", "FACTOR_SIZES", "Shapes3DWorld", "Shapes3DH5", "load_shapes3d", "SHAPES3D_FILE",
           "reference_factor_values"]

FACTOR_NAMES: Tuple[str, ...] = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES: Tuple[int, ...] = (10, 10, 10, 8, 4, 15)
SHAPES3D_FILE = "3dshapes.h5"
IMAGE_SHAPE = (64, 64, 3)
#: the most label rows read (the release has 480000)
_MAX_ROWS = 2 ** 24


def reference_factor_values(sizes: Sequence[int] = FACTOR_SIZES) -> Tuple[np.ndarray, ...]:
    """The factor values of the released file (for ``sizes`` values per factor):
    hues ``k / n_hue``, scale ``linspace(0.75, 1.25)``, shape ``0..n-1``, orientation
    ``linspace(-30, 30)``."""
    fh, wh, oh, sc, sh, orient = sizes
    return (np.arange(fh) / fh, np.arange(wh) / wh, np.arange(oh) / oh, np.linspace(0.75, 1.25, sc),
            np.arange(sh, dtype=np.float64), np.linspace(-30.0, 30.0, orient))


class Shapes3DWorld:
    """A full factor grid of 64 x 64 RGB images (see module doc for the interface).

    Subclasses set ``factor_values`` (tuple of sorted 1-D arrays, one per factor) and
    implement :meth:`_read` (sorted unique rows -> uint8 (k, 64, 64, 3))."""

    factor_names: Tuple[str, ...] = FACTOR_NAMES
    factor_values: Tuple[np.ndarray, ...] = ()
    name = "3dshapes"
    #: True for a stand-in world that is not the released dataset
    procedural = False

    @property
    def factor_sizes(self) -> Tuple[int, ...]:
        return tuple(len(v) for v in self.factor_values)

    def __len__(self) -> int:
        return int(np.prod(self.factor_sizes))

    def _check_rows(self, rows) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
            raise ValueError(f"{self.name}: rows must be a 1-D integer array, got {rows.dtype} {rows.shape}")
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise ValueError(f"{self.name}: rows must be in 0..{len(self) - 1}, got {rows.min()}..{rows.max()}")
        return rows

    def factor_indices(self, rows) -> np.ndarray:
        """int64 (k, 6): the grid index of each factor for each row (closed form)."""
        rows = self._check_rows(rows)
        return np.stack(np.unravel_index(rows, self.factor_sizes), axis=1).astype(np.int64)

    def factor_array(self, rows) -> np.ndarray:
        """float64 (k, 6): the factor values of each row."""
        idx = self.factor_indices(rows)
        return np.stack([v[idx[:, j]] for j, v in enumerate(self.factor_values)], axis=1)

    def rows_of(self, factor_indices) -> np.ndarray:
        """Rows of the images with the given (k, 6) factor indices."""
        idx = np.asarray(factor_indices, dtype=np.int64)
        if idx.ndim != 2 or idx.shape[1] != len(self.factor_values):
            raise ValueError(f"{self.name}: factor indices must be (k, {len(self.factor_values)}), got {idx.shape}")
        return np.ravel_multi_index(tuple(idx.T), self.factor_sizes).astype(np.int64)

    def images(self, rows) -> np.ndarray:
        """uint8 (k, 64, 64, 3) images of ``rows`` (any order, repeats allowed)."""
        rows = self._check_rows(rows)
        if rows.size == 0:
            return np.zeros((0,) + IMAGE_SHAPE, np.uint8)
        uniq, inverse = np.unique(rows, return_inverse=True)
        return self._read(uniq)[inverse]

    def _read(self, sorted_rows: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        sizes = "x".join(map(str, self.factor_sizes))
        return f"{type(self).__name__}({self.name!r}, grid {sizes} = {len(self)} images)"


class Shapes3DH5(Shapes3DWorld):
    """The released ``3dshapes.h5``, opened read-only; images are read on demand.

    ``expected_sizes``: values per factor the file must have (default the release's
    10/10/10/8/4/15; ``None`` accepts any grid, e.g. a reduced test file)."""

    def __init__(self, path, expected_sizes: Sequence[int] | None = FACTOR_SIZES):
        import h5py

        self.path = os.fspath(path)
        self.name = f"3dshapes ({self.path})"
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: no such file (expected the 3D Shapes release {SHAPES3D_FILE})")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            raise ValueError(f"{self.path}: not an HDF5 file ({e}); expected {SHAPES3D_FILE} with datasets "
                             f"'images' and 'labels'") from None
        try:
            self._validate(expected_sizes)
        except Exception:
            self._file.close()
            raise

    def _validate(self, expected_sizes) -> None:
        """Check the file against the release's layout, from its declared shapes first."""
        f, where = self._file, self.path
        missing = [k for k in ("images", "labels") if k not in f or not hasattr(f[k], "shape")]
        if missing:
            raise ValueError(f"{where}: missing dataset(s) {missing}; expected 'images' uint8 (N, 64, 64, 3) and "
                             f"'labels' float (N, 6); found {sorted(f.keys())}")
        images, labels = f["images"], f["labels"]
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(f"{where}: 'images' must be uint8 (N, 64, 64, 3), got {images.dtype} {images.shape}")
        if labels.ndim != 2 or labels.shape[1] != 6 or labels.dtype.kind != "f":
            raise ValueError(f"{where}: 'labels' must be float (N, 6), got {labels.dtype} {labels.shape}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{where}: {images.shape[0]} images but {labels.shape[0]} label rows")
        # declared sizes checked before reading: a 1.7 KB file may declare 2e8 rows (9.6 GB of labels)
        if expected_sizes is not None and labels.shape[0] != int(np.prod(expected_sizes)):
            raise ValueError(f"{where}: declares {labels.shape[0]} rows; the 3D Shapes release has "
                             f"{int(np.prod(expected_sizes))} ({'/'.join(map(str, expected_sizes))} values of "
                             f"{', '.join(FACTOR_NAMES)})")
        if labels.shape[0] > _MAX_ROWS:
            raise ValueError(f"{where}: declares {labels.shape[0]} rows, more than the {_MAX_ROWS} this reader takes")
        lab = labels[()]
        values = tuple(np.unique(lab[:, j]) for j in range(6))
        sizes = tuple(len(v) for v in values)
        if expected_sizes is not None and sizes != tuple(expected_sizes):
            raise ValueError(f"{where}: factors have {'/'.join(map(str, sizes))} values; the 3D Shapes release has "
                             f"{'/'.join(map(str, expected_sizes))} ({', '.join(FACTOR_NAMES)})")
        if int(np.prod(sizes)) != lab.shape[0]:
            raise ValueError(f"{where}: {lab.shape[0]} rows but the factor grid has {int(np.prod(sizes))} points "
                             f"({'x'.join(map(str, sizes))}); expected one image per grid point")
        self.factor_values = values
        expected = self.factor_array(np.arange(lab.shape[0]))
        bad = np.flatnonzero(~np.all(expected == lab, axis=1))
        if bad.size:
            r = int(bad[0])
            raise ValueError(f"{where}: labels do not follow the 3D Shapes row order (row {r} has {lab[r].tolist()}, "
                             f"expected {expected[r].tolist()}: factor grid in C order, orientation fastest)")

    #: a group of wanted rows is read as one slice when it spans at most this many rows per wanted row
    SLICE_DENSITY = 8
    BLOCK_ROWS = 4096

    def _read(self, sorted_rows: np.ndarray) -> np.ndarray:
        ds = self._file["images"]
        out = np.empty((len(sorted_rows),) + IMAGE_SHAPE, np.uint8)
        groups = np.split(np.arange(len(sorted_rows)), np.flatnonzero(np.diff(sorted_rows // self.BLOCK_ROWS)) + 1)
        for g in groups:
            rows = sorted_rows[g]
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            if hi - lo <= self.SLICE_DENSITY * len(rows):
                out[g] = ds[lo:hi][rows - lo]
            else:
                out[g] = ds[rows.tolist()]
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_shapes3d(data_root, expected_sizes: Sequence[int] | None = FACTOR_SIZES) -> Shapes3DH5:
    """Open ``data_root/3dshapes.h5`` (``data_root`` may also be the file itself)."""
    root = os.path.expanduser(os.fspath(data_root))
    if os.path.isdir(root):
        path = os.path.join(root, SHAPES3D_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{root}: no {SHAPES3D_FILE} in this folder (--data-root); expected the 3D Shapes "
                                    f"release (images uint8 (480000, 64, 64, 3), labels float64 (480000, 6))")
        return Shapes3DH5(path, expected_sizes)
    if not os.path.exists(root):
        raise FileNotFoundError(f"{root}: data root does not exist (--data-root); expected a folder holding "
                                f"{SHAPES3D_FILE}")
    return Shapes3DH5(root, expected_sizes)
