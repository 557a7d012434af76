"""miniImageNet (Vinyals et al. 2016; Ravi & Larochelle 2017 split: 64 / 16 / 20 classes).

Two on-disk formats are read (see docs/data.md):

* MetaOptNet / Gidaris pickles ``miniImageNet_category_split_{train_phase_train,val,test}.pickle``:
  a Python 2 pickled dict with ``data`` uint8 (N, 84, 84, 3), ``labels`` (list of int,
  global class ids 0..99) and ``catname2label`` {wnid: label}.
* learn2learn caches ``mini-imagenet-cache-{train,validation,test}.pkl``: a dict with
  ``image_data`` uint8 (N, 84, 84, 3) and ``class_dict`` {wnid: [indices]}.  Class ids are
  the sorted wnids numbered from the split's offset (train 0, val 64, test 80) so that ids
  of different splits never collide.
"""
from __future__ import annotations

import os

import numpy as np

from .base import FewShotSource, images_nhwc_to_chw, int_labels, require_keys, str_keys
from .safe_pickle import load_pickle

__all__ = ["MINI_IMAGENET_MEAN", "MINI_IMAGENET_STD", "METAOPTNET_FILES", "L2L_CACHE_FILES",
           "load_metaoptnet_miniimagenet", "load_l2l_miniimagenet"]

MINI_IMAGENET_MEAN = tuple(v / 255.0 for v in (120.39586422, 115.59361427, 104.54012653))
MINI_IMAGENET_STD = tuple(v / 255.0 for v in (70.68188272, 68.27635443, 72.54505529))

METAOPTNET_FILES = {
    "train": "miniImageNet_category_split_train_phase_train.pickle",
    "val": "miniImageNet_category_split_val.pickle",
    "test": "miniImageNet_category_split_test.pickle",
    "train_phase_val": "miniImageNet_category_split_train_phase_val.pickle",
    "train_phase_test": "miniImageNet_category_split_train_phase_test.pickle",
}
L2L_CACHE_FILES = {
    "train": "mini-imagenet-cache-train.pkl",
    "val": "mini-imagenet-cache-validation.pkl",
    "test": "mini-imagenet-cache-test.pkl",
}
_L2L_CLASS_OFFSET = {"train": 0, "val": 64, "test": 80}


def load_metaoptnet_miniimagenet(path: str, split: str) -> FewShotSource:
    """Read one MetaOptNet miniImageNet pickle."""
    d = str_keys(load_pickle(path), path)
    require_keys(d, ("data", "labels"), path,
                 "MetaOptNet miniImageNet dict {'data': uint8 (N,84,84,3), 'labels': [int], 'catname2label': {...}}")
    images = images_nhwc_to_chw(d["data"], path, "data")
    labels = int_labels(d["labels"], images.shape[0], path, "labels")
    names = None
    if isinstance(d.get("catname2label"), dict):
        names = {int(v): (k.decode("latin1") if isinstance(k, bytes) else str(k))
                 for k, v in d["catname2label"].items()}
    return FewShotSource(images, labels, split=split, name="mini-imagenet",
                         mean=MINI_IMAGENET_MEAN, std=MINI_IMAGENET_STD, class_names=names, path=path)


def load_l2l_miniimagenet(path: str, split: str) -> FewShotSource:
    """Read one learn2learn ``mini-imagenet-cache-*.pkl`` file."""
    d = str_keys(load_pickle(path), path)
    require_keys(d, ("image_data", "class_dict"), path,
                 "learn2learn cache dict {'image_data': uint8 (N,84,84,3), 'class_dict': {wnid: [indices]}}")
    images = images_nhwc_to_chw(d["image_data"], path, "image_data")
    n = images.shape[0]
    class_dict = d["class_dict"]
    if not isinstance(class_dict, dict) or not class_dict:
        raise ValueError(f"{path}: 'class_dict' must be a non-empty dict {{wnid: [indices]}}; "
                         f"got {type(class_dict).__name__}")
    labels = np.full(n, -1, dtype=np.int64)
    names = {}
    offset = _L2L_CLASS_OFFSET.get(split, 0)
    owner = {}
    for j, wnid in enumerate(sorted(class_dict, key=str)):
        try:
            idx = np.asarray(class_dict[wnid])
        except (TypeError, ValueError):
            idx = None
        if idx is None or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"{path}: class_dict[{wnid!r}] must be a list of integer image indices")
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{path}: class_dict[{wnid!r}] has indices outside 0..{n - 1}")
        taken = idx[labels[idx] >= 0]
        if taken.size or np.unique(idx).size != idx.size:   # an image of two classes: one would vanish
            i = int(taken[0]) if taken.size else int(idx[np.argmax(np.bincount(idx))])
            other = owner.get(int(labels[i]), wnid)
            raise ValueError(f"{path}: image {i} is listed by class_dict[{wnid!r}] and class_dict[{other!r}]; "
                             f"each image must belong to one class, once")
        labels[idx] = offset + j
        owner[offset + j] = wnid
        names[offset + j] = wnid.decode("latin1") if isinstance(wnid, bytes) else str(wnid)
    if (labels < 0).any():
        raise ValueError(f"{path}: {(labels < 0).sum()} images belong to no class of 'class_dict'")
    return FewShotSource(images, labels, split=split, name="mini-imagenet",
                         mean=MINI_IMAGENET_MEAN, std=MINI_IMAGENET_STD, class_names=names, path=path)


def find_miniimagenet(dirs, split: str):
    """Return ``(loader, path)`` of ``split``: MetaOptNet pickles first, then learn2learn caches."""
    for files, loader in ((METAOPTNET_FILES, load_metaoptnet_miniimagenet),
                          (L2L_CACHE_FILES, load_l2l_miniimagenet)):
        for d in dirs:
            if split in files and os.path.isfile(os.path.join(d, files[split])):
                return loader, os.path.join(d, files[split])
    return None, None


def expected_files(split: str):
    return [f for f in (METAOPTNET_FILES.get(split), L2L_CACHE_FILES.get(split)) if f]
