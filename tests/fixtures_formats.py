"""Writers of small dataset files in the *real* on-disk formats (random pixels), for tests.

* :func:`py2_pickle_dumps` writes a pickle the way Python 2 (``cPickle``, protocol 2) did:
  byte strings and text as Python 2 ``str`` (``SHORT_BINSTRING``/``BINSTRING``), numpy arrays
  reduced through ``numpy.core.multiarray._reconstruct`` with the raw buffer as a ``str``
  state and dtypes as ``numpy.dtype('u1', 0, 1)`` + version-3 state.  Python 3 reads these
  only with ``encoding="latin1"`` (the array bytes are not ASCII).
* ``write_*`` build a data root: MetaOptNet miniImageNet / CIFAR-FS / FC100 pickles (Python 2),
  learn2learn's miniImageNet cache (Python 3 pickle), learn2learn's CIFAR-FS PNG folders,
  and a fake ``cifar-100-python.tar.gz`` (Python 2 pickles ``train``, ``test``, ``meta``).

Every writer returns what it wrote so tests can compare.  Reusable by other test suites
(e.g. end-to-end CLI tests) and scripts: put ``tests/`` on ``sys.path`` *after* the repository
root and ``from fixtures_formats import write_metaoptnet_miniimagenet`` (as
``tests/episodes/conftest.py`` and ``scripts/gpu_check.sh`` do).  ``tests.fixtures_formats``
does not work: learn2learn 0.2.0 installs a top-level ``tests`` package into site-packages,
and ``tests/episodes/`` (no ``__init__.py``) shadows the ``episodes`` package if ``tests/``
comes first on the path.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from typing import Dict, Optional, Sequence

import numpy as np

SPLITS = ("train", "val", "test")

# -- a Python 2 style pickle writer ---------------------------------------------------------


def _py2_str(out: bytearray, b: bytes) -> None:
    if len(b) < 256:
        out += b"U" + bytes([len(b)]) + b                       # SHORT_BINSTRING
    else:
        out += b"T" + struct.pack("<i", len(b)) + b             # BINSTRING


def _global(out: bytearray, module: str, name: str) -> None:
    out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tuple(out: bytearray, items) -> None:
    out += b"("
    for it in items:
        _write(out, it)
    out += b"t"


def _dtype(out: bytearray, dt: np.dtype) -> None:
    # Python 2 numpy: dtype.__reduce__ -> (numpy.dtype, ('u1', 0, 1), (3, '|', None, None, None, -1, -1, 0))
    _global(out, "numpy", "dtype")
    out += b"("
    _py2_str(out, dt.str[1:].encode())
    _write(out, 0)
    _write(out, 1)
    out += b"tR("
    _write(out, 3)
    _py2_str(out, dt.str[0].encode())
    for v in (None, None, None, -1, -1, 0):
        _write(out, v)
    out += b"tb"                                                # BUILD


def _ndarray(out: bytearray, a: np.ndarray) -> None:
    # ndarray.__reduce__ -> (_reconstruct, (ndarray, (0,), 'b'), (1, shape, dtype, is_fortran, rawdata))
    a = np.ascontiguousarray(a)
    _global(out, "numpy.core.multiarray", "_reconstruct")
    out += b"("
    _global(out, "numpy", "ndarray")
    _tuple(out, (0,))
    _py2_str(out, b"b")
    out += b"tR("
    _write(out, 1)
    _tuple(out, tuple(int(s) for s in a.shape))
    _dtype(out, a.dtype)
    _write(out, False)
    _py2_str(out, a.tobytes())
    out += b"tb"


def _write(out: bytearray, obj) -> None:
    if obj is None:
        out += b"N"
    elif obj is True:
        out += b"\x88"
    elif obj is False:
        out += b"\x89"
    elif isinstance(obj, (int, np.integer)):
        v = int(obj)
        if 0 <= v < 256:
            out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            out += b"M" + struct.pack("<H", v)
        elif -2 ** 31 <= v < 2 ** 31:
            out += b"J" + struct.pack("<i", v)
        else:
            enc = pickle.encode_long(v)
            out += b"\x8a" + bytes([len(enc)]) + enc
    elif isinstance(obj, float):
        out += b"G" + struct.pack(">d", obj)
    elif isinstance(obj, str):
        _py2_str(out, obj.encode("latin1"))
    elif isinstance(obj, bytes):
        _py2_str(out, obj)
    elif isinstance(obj, list):
        out += b"]"
        if obj:
            out += b"("
            for it in obj:
                _write(out, it)
            out += b"e"                                          # APPENDS
    elif isinstance(obj, tuple):
        _tuple(out, obj)
    elif isinstance(obj, dict):
        out += b"}"
        if obj:
            out += b"("
            for k, v in obj.items():
                _write(out, k)
                _write(out, v)
            out += b"u"                                          # SETITEMS
    elif isinstance(obj, np.ndarray):
        _ndarray(out, obj)
    else:
        raise TypeError(f"py2 pickle writer: unsupported {type(obj).__name__}")


def py2_pickle_dumps(obj) -> bytes:
    """Serialise dicts/lists/tuples/ints/floats/str/bytes/numpy arrays as Python 2 cPickle did."""
    out = bytearray(b"\x80\x02")
    _write(out, obj)
    out += b"."
    return bytes(out)


def write_py2_pickle(path: str, obj) -> str:
    with open(path, "wb") as f:
        f.write(py2_pickle_dumps(obj))
    return path


# -- dataset roots ------------------------------------------------------------------------------


def _images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _wnid(c: int) -> str:
    return f"n{1000000 + c:08d}"


MINI_FILES = {"train": "miniImageNet_category_split_train_phase_train.pickle",
              "val": "miniImageNet_category_split_val.pickle",
              "test": "miniImageNet_category_split_test.pickle"}


def write_metaoptnet_miniimagenet(root: str, classes: Dict[str, int] = None, per_class: int = 12,
                                  size: int = 84, seed: int = 0) -> Dict[str, dict]:
    """MetaOptNet miniImageNet pickles: {'data': uint8 (N,84,84,3), 'labels': [int], 'catname2label'}.
    Class ids are global and consecutive over train, val, test (like 0..63, 64..79, 80..99)."""
    classes = classes or {"train": 8, "val": 5, "test": 6}
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    written, start = {}, 0
    for split in SPLITS:
        ids = list(range(start, start + classes[split]))
        start += classes[split]
        labels = [c for c in ids for _ in range(per_class)]
        perm = rng.permutation(len(labels))                  # examples not grouped by class
        labels = [labels[i] for i in perm]
        d = {"data": _images(rng, len(labels), size), "labels": labels,
             "catname2label": {_wnid(c): c for c in ids}}
        write_py2_pickle(os.path.join(root, MINI_FILES[split]), d)
        written[split] = d
    return written


def write_l2l_miniimagenet(root: str, classes: Dict[str, int] = None, per_class: int = 12,
                           size: int = 84, seed: int = 1) -> Dict[str, dict]:
    """learn2learn caches mini-imagenet-cache-{train,validation,test}.pkl:
    {'image_data': uint8 (N,84,84,3), 'class_dict': {wnid: [indices]}} (Python 3 pickle)."""
    classes = classes or {"train": 8, "val": 5, "test": 6}
    names = {"train": "train", "val": "validation", "test": "test"}
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    written, start = {}, 0
    for split in SPLITS:
        n = classes[split] * per_class
        order = rng.permutation(n)
        class_dict = {_wnid(start + j): sorted(order[j * per_class:(j + 1) * per_class].tolist())
                      for j in range(classes[split])}
        start += classes[split]
        d = {"image_data": _images(rng, n, size), "class_dict": class_dict}
        with open(os.path.join(root, f"mini-imagenet-cache-{names[split]}.pkl"), "wb") as f:
            pickle.dump(d, f, protocol=pickle.HIGHEST_PROTOCOL)
        written[split] = d
    return written


def cifar_split_classes(dataset: str) -> Dict[str, list]:
    """Fine-label ids of each split (from the published split lists)."""
    from episodes.sources.cifar import COARSE_LABEL_NAMES, FINE_LABEL_NAMES, split_fine_labels
    return split_fine_labels(dataset, list(FINE_LABEL_NAMES), _COARSE_OF_FINE)


def write_metaoptnet_cifar(root: str, dataset: str = "cifar-fs", per_class: int = 10,
                           n_classes: Optional[Dict[str, int]] = None, seed: int = 2) -> Dict[str, dict]:
    """MetaOptNet CIFAR_FS_*.pickle / FC100_*.pickle (Python 2): {'data': uint8 (N,32,32,3), 'labels': [int]}.
    Uses the first ``n_classes[split]`` fine labels of each published split (all by default)."""
    prefix = {"cifar-fs": "CIFAR_FS", "fc100": "FC100"}[dataset]
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    written = {}
    for split, ids in cifar_split_classes(dataset).items():
        if n_classes:
            ids = ids[: n_classes[split]]
        labels = [c for c in ids for _ in range(per_class)]
        d = {"data": _images(rng, len(labels), 32), "labels": labels}
        write_py2_pickle(os.path.join(root, f"{prefix}_{split}.pickle"), d)
        written[split] = d
    return written


def write_l2l_cifarfs_folders(root: str, per_class: int = 6, n_classes: Optional[Dict[str, int]] = None,
                              seed: int = 3) -> Dict[str, Dict[str, np.ndarray]]:
    """learn2learn CIFAR-FS folders root/cifarfs/processed/{train,val,test}/<fine name>/<i>.png."""
    from PIL import Image
    from episodes.sources.cifar import FINE_LABEL_NAMES
    rng = np.random.default_rng(seed)
    written = {}
    for split, ids in cifar_split_classes("cifar-fs").items():
        if n_classes:
            ids = ids[: n_classes[split]]
        written[split] = {}
        for c in ids:
            name = FINE_LABEL_NAMES[c]
            d = os.path.join(root, "cifarfs", "processed", split, name)
            os.makedirs(d, exist_ok=True)
            imgs = _images(rng, per_class, 32)
            for i, im in enumerate(imgs):
                Image.fromarray(im).save(os.path.join(d, f"{name}_{i:03d}.png"))
            written[split][name] = imgs
    return written


# CIFAR-100 coarse label of each fine label (index order), as in the archive.
_COARSE_OF_FINE_LIST = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18,
    17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5,
    8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13]
_COARSE_OF_FINE = dict(enumerate(_COARSE_OF_FINE_LIST))


def write_cifar100_archive(path: str, train_per_class: int = 5, test_per_class: int = 1,
                           seed: int = 4) -> Dict[str, dict]:
    """A small ``cifar-100-python.tar.gz``: members cifar-100-python/{train,test,meta} as Python 2
    pickles ({'data': uint8 (N, 3072) R,G,B planes, 'fine_labels', 'coarse_labels', 'filenames',
    'batch_label'}; meta {'fine_label_names', 'coarse_label_names'}) plus file.txt~."""
    from episodes.sources.cifar import COARSE_LABEL_NAMES, FINE_LABEL_NAMES
    rng = np.random.default_rng(seed)
    parts = {}
    for member, per in (("train", train_per_class), ("test", test_per_class)):
        fine = np.repeat(np.arange(100), per)
        fine = fine[rng.permutation(fine.size)]
        parts[member] = {
            "filenames": [f"img_{member}_{i}.png" for i in range(fine.size)],
            "batch_label": f"{member}ing batch 1 of 1",
            "fine_labels": fine.tolist(),
            "coarse_labels": [_COARSE_OF_FINE[int(f)] for f in fine],
            "data": rng.integers(0, 256, size=(fine.size, 3072), dtype=np.uint8),
        }
    parts["meta"] = {"fine_label_names": list(FINE_LABEL_NAMES), "coarse_label_names": list(COARSE_LABEL_NAMES)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in list(parts.items()) + [("file.txt~", None)]:
            data = py2_pickle_dumps(obj) if obj is not None else b""
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return parts
