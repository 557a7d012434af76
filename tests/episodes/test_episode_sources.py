"""Loading every supported on-disk format (files built in the real formats) + bad-input errors."""
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

import fixtures_formats as ff
from episodes.sources import load_source
from episodes.sources.cifar import FINE_LABEL_NAMES, CIFAR_MEAN
from episodes.sources.miniimagenet import MINI_IMAGENET_MEAN


def _check_against(src, data_nhwc, labels):
    assert src.data.dtype == torch.uint8 and src.data.shape == (len(labels), 3) + data_nhwc.shape[1:3]
    assert src.data.is_contiguous()
    assert torch.equal(src.data, torch.from_numpy(data_nhwc).permute(0, 3, 1, 2))
    assert torch.equal(src.labels, torch.as_tensor(labels, dtype=torch.int64))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_metaoptnet_miniimagenet(mini_metaoptnet, split):
    root, written = mini_metaoptnet
    src = load_source("mini-imagenet", root, split)
    _check_against(src, written[split]["data"], written[split]["labels"])
    assert src.split == split and src.name == "mini-imagenet" and src.mean == MINI_IMAGENET_MEAN
    assert src.class_names == {v: k for k, v in written[split]["catname2label"].items()}
    assert src.path.endswith(ff.MINI_FILES[split])


def test_metaoptnet_miniimagenet_splits_disjoint(mini_metaoptnet):
    root, _ = mini_metaoptnet
    cls = [set(load_source("mini-imagenet", root, s).classes.tolist()) for s in ("train", "validation", "test")]
    assert not (cls[0] & cls[1]) and not (cls[0] & cls[2]) and not (cls[1] & cls[2])


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_l2l_miniimagenet_cache(mini_l2l, split):
    root, written = mini_l2l
    src = load_source("miniimagenet", root, split)
    d = written[split]
    wnids = sorted(d["class_dict"])
    offset = {"train": 0, "val": 64, "test": 80}[split]
    expected = np.empty(len(d["image_data"]), np.int64)
    for j, w in enumerate(wnids):
        expected[d["class_dict"][w]] = offset + j
    _check_against(src, d["image_data"], expected)
    assert src.class_names == {offset + j: w for j, w in enumerate(wnids)}


def test_metaoptnet_preferred_and_found_in_subfolder(tmp_path, mini_metaoptnet, mini_l2l):
    shutil.copytree(mini_metaoptnet[0], tmp_path / "miniImageNet")
    shutil.copytree(mini_l2l[0], tmp_path / "l2l", dirs_exist_ok=True)
    src = load_source("mini-imagenet", tmp_path, "test")
    assert os.path.basename(src.path) == ff.MINI_FILES["test"]       # MetaOptNet wins over the l2l cache
    (tmp_path / "miniImageNet" / ff.MINI_FILES["test"]).unlink()
    assert load_source("mini-imagenet", tmp_path, "test").path.endswith("mini-imagenet-cache-test.pkl")


@pytest.mark.parametrize("dataset", ["cifar-fs", "fc100"])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_metaoptnet_cifar(cifar_pickles, dataset, split):
    root, written = cifar_pickles
    src = load_source(dataset, root, split)
    d = written[dataset][split]
    _check_against(src, d["data"], d["labels"])
    assert src.mean == CIFAR_MEAN and src.name == dataset
    assert sorted(src.classes.tolist()) == ff.cifar_split_classes(dataset)[split]
    assert len(src.classes) == {"cifar-fs": {"train": 64, "val": 16, "test": 20},
                                "fc100": {"train": 60, "val": 20, "test": 20}}[dataset][split]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_l2l_cifarfs_folders(cifarfs_folders, split):
    root, written = cifarfs_folders
    src = load_source("cifar-fs", root, split)
    names = sorted(written[split])
    assert len(src) == sum(len(v) for v in written[split].values())
    for name in names:
        c = FINE_LABEL_NAMES.index(name)
        idx = src.indices_by_class[c]
        got = src.data[idx].permute(0, 2, 3, 1).numpy()
        assert np.array_equal(got, written[split][name]), name       # PNG round trip is lossless
        assert src.class_names[c] == name


# -- errors ----------------------------------------------------------------------------------------

def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data root '.*nowhere' does not exist"):
        load_source("mini-imagenet", tmp_path / "nowhere", "train")


@pytest.mark.parametrize("dataset,expected", [
    ("mini-imagenet", "miniImageNet_category_split_val.pickle or mini-imagenet-cache-validation.pkl"),
    ("cifar-fs", "CIFAR_FS_val.pickle or cifarfs/processed/val"),
    ("fc100", "FC100_val.pickle")])
def test_missing_split_file(tmp_path, dataset, expected):
    with pytest.raises(FileNotFoundError, match=f"no val split.*expected {expected}"):
        load_source(dataset, tmp_path, "val")


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_source("imagenet", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_source("cifar-fs", tmp_path, "dev")


@pytest.mark.parametrize("payload,match", [
    ({"images": np.zeros((2, 32, 32, 3), np.uint8), "labels": [0, 1]}, r"missing key\(s\) \['data'\]"),
    ({"data": np.zeros((2, 32, 32, 3), np.float32), "labels": [0, 1]}, r"'data' must be a uint8 array"),
    ({"data": np.zeros((2, 32, 32), np.uint8), "labels": [0, 1]}, r"'data' must be a uint8 array"),
    ({"data": np.zeros((2, 32, 32, 3), np.uint8), "labels": [0, 1, 2]}, r"'labels' must be 2 integer labels"),
    ([1, 2, 3], "expected a pickled dict, got list"),
])
def test_wrong_pickle_structure(tmp_path, payload, match):
    ff.write_py2_pickle(str(tmp_path / "FC100_train.pickle"), payload)
    with pytest.raises(ValueError, match=r"FC100_train\.pickle: " + match):
        load_source("fc100", tmp_path, "train")


def test_wrong_l2l_cache_structure(tmp_path):
    with open(tmp_path / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": np.zeros((3, 84, 84, 3), np.uint8), "class_dict": {"n1": [0, 1, 7]}}, f)
    with pytest.raises(ValueError, match=r"class_dict\['n1'\] has indices outside 0..2"):
        load_source("mini-imagenet", tmp_path, "test")
