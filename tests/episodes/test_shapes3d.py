"""The 3dshapes.h5 reader on small files written in the release's layout (reduced grid)."""
import itertools

import h5py
import numpy as np
import pytest

from episodes.sources.shapes3d import (FACTOR_SIZES, Shapes3DH5, load_shapes3d, reference_factor_values)

SMALL = (2, 3, 2, 2, 4, 3)          # 288 rows


def write_release_layout(path, sizes=SMALL, seed=0, labels_dtype=np.float64):
    """A file with the release's dataset names and dtypes; rows enumerate the grid in C order
    (written with itertools.product, independently of the reader's closed form).  Returns
    (images, labels)."""
    values = reference_factor_values(sizes)
    labels = np.array([[values[j][i] for j, i in enumerate(idx)]
                       for idx in itertools.product(*[range(s) for s in sizes])], dtype=labels_dtype)
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), 64, 64, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=(8, 64, 64, 3))
        f.create_dataset("labels", data=labels)
    return images, labels


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "3dshapes.h5"
    images, labels = write_release_layout(path)
    return path, images, labels


def test_reads_rows_and_factors(small_file):
    path, images, labels = small_file
    with load_shapes3d(path.parent, expected_sizes=None) as world:
        assert world.factor_sizes == SMALL and len(world) == len(labels)
        rows = np.array([287, 0, 5, 5, 140, 3])                     # any order, repeats
        np.testing.assert_array_equal(world.images(rows), images[rows])
        np.testing.assert_array_equal(world.factor_array(rows), labels[rows])
        idx = world.factor_indices(rows)
        np.testing.assert_array_equal(world.rows_of(idx), rows)
        # closed form: orientation varies fastest
        assert world.factor_indices([1]).tolist() == [[0, 0, 0, 0, 0, 1]]
        assert world.rows_of([[0, 0, 0, 0, 1, 0]]).tolist() == [SMALL[5]]
        every = np.arange(len(labels))
        np.testing.assert_array_equal(world.images(every), images)  # slice path
        sparse = np.arange(0, len(labels), 40)
        np.testing.assert_array_equal(world.images(sparse), images[sparse])  # point-selection path
        assert world.images(np.zeros(0, np.int64)).shape == (0, 64, 64, 3)


def test_release_sizes_are_required_by_default(small_file):
    path, _, _ = small_file
    with pytest.raises(ValueError, match="10/10/10/8/4/15"):
        load_shapes3d(path)
    assert FACTOR_SIZES == (10, 10, 10, 8, 4, 15)


def test_bad_files_give_one_line_errors(tmp_path, small_file):
    path, images, labels = small_file
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no 3dshapes.h5"):
        load_shapes3d(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_shapes3d(tmp_path / "missing")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        Shapes3DH5(junk, None)
    cases = {
        "missing dataset": lambda f: f.create_dataset("images", data=images),
        "'images' must be uint8": lambda f: (f.create_dataset("images", data=images.astype(np.float32)),
                                             f.create_dataset("labels", data=labels)),
        "'labels' must be float": lambda f: (f.create_dataset("images", data=images),
                                             f.create_dataset("labels", data=labels[:, :5])),
        "row order": lambda f: (f.create_dataset("images", data=images),
                                f.create_dataset("labels", data=labels[::-1])),
        "grid has": lambda f: (f.create_dataset("images", data=images[:-1]),
                               f.create_dataset("labels", data=labels[:-1])),
    }
    for i, (message, write) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.h5"
        with h5py.File(bad, "w") as f:
            write(f)
        with pytest.raises(ValueError, match=message) as e:
            Shapes3DH5(bad, None)
        assert "\n" not in str(e.value) and str(bad) in str(e.value)
    with Shapes3DH5(path, None) as world:
        with pytest.raises(ValueError, match="rows must be in"):
            world.images([len(labels)])


def test_declared_rows_are_checked_before_reading(tmp_path):
    """A 1.7 KB file declaring 2e8 rows used to read 9.6 GB of labels first."""
    path = tmp_path / "3dshapes.h5"
    with h5py.File(path, "w") as f:          # declared shapes, no data written (HDF5 allocates lazily)
        f.create_dataset("images", shape=(200_000_000, 64, 64, 3), dtype=np.uint8, chunks=(1, 64, 64, 3))
        f.create_dataset("labels", shape=(200_000_000, 6), dtype=np.float64, chunks=(1024, 6))
    assert path.stat().st_size < 100_000
    with pytest.raises(ValueError, match="declares 200000000 rows; the 3D Shapes release has 480000"):
        load_shapes3d(tmp_path)
    with pytest.raises(ValueError, match="more than the 16777216 this reader takes"):
        load_shapes3d(tmp_path, expected_sizes=None)
