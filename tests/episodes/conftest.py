"""Fixture builders for the episodes tests: small data roots in the real on-disk formats.

The format writers live in ``tests/fixtures_formats.py`` (importable as ``fixtures_formats``
once ``tests/`` is on ``sys.path``, which this conftest ensures) so other suites can reuse them.
"""
import os
import sys

import pytest
import torch

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

import fixtures_formats as ff  # noqa: E402

from episodes.sources.base import FewShotSource  # noqa: E402


@pytest.fixture(scope="session")
def mini_metaoptnet(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mini_metaoptnet"))
    return root, ff.write_metaoptnet_miniimagenet(root)


@pytest.fixture(scope="session")
def mini_l2l(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mini_l2l"))
    return root, ff.write_l2l_miniimagenet(root)


@pytest.fixture(scope="session")
def cifar_pickles(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cifar_pickles"))
    return root, {"cifar-fs": ff.write_metaoptnet_cifar(root, "cifar-fs", per_class=8),
                  "fc100": ff.write_metaoptnet_cifar(root, "fc100", per_class=8)}


@pytest.fixture(scope="session")
def cifarfs_folders(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cifarfs_folders"))
    return root, ff.write_l2l_cifarfs_folders(root, per_class=6, n_classes={"train": 7, "val": 5, "test": 6})


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory):
    path = os.path.join(str(tmp_path_factory.mktemp("cifar_archive")), "cifar-100-python.tar.gz")
    return path, ff.write_cifar100_archive(path)


def make_image_source(n_classes=10, per_class=12, size=16, split="train", name="mini-imagenet", seed=0,
                      counts=None, first_class=0):
    """An in-memory image source (uint8 (n, 3, size, size)); ``counts`` overrides per-class sizes."""
    g = torch.Generator().manual_seed(seed)
    counts = counts or [per_class] * n_classes
    labels = torch.cat([torch.full((c,), first_class + j, dtype=torch.int64) for j, c in enumerate(counts)])
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    data = torch.randint(0, 256, (labels.numel(), 3, size, size), dtype=torch.uint8, generator=g)
    from episodes.transforms import NORMALISATION
    mean, std = NORMALISATION.get(name, NORMALISATION["mini-imagenet"])
    return FewShotSource(data, labels, split=split, name=name, mean=mean, std=std)


def make_vector_source(n_classes=6, per_class=10, dim=5, split="train", seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return FewShotSource(torch.randn(labels.numel(), dim, generator=g), labels, split=split, name="synthetic")


@pytest.fixture
def image_source():
    return make_image_source()


@pytest.fixture
def make_images():
    """Factory fixture: ``make_images(n_classes=..., per_class=..., size=..., ...)`` -> FewShotSource."""
    return make_image_source


@pytest.fixture
def make_vectors():
    return make_vector_source
