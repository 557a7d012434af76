"""Fixtures of the reliability suite (helpers: ``reliability_helpers``)."""
import pytest

from reliability_helpers import SYN, main


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    """CIFAR-FS MetaOptNet pickles (Python 2 format): 5 / 4 / 4 classes of 8 images."""
    from fixtures_formats import write_metaoptnet_cifar
    root = tmp_path_factory.mktemp("cifarfs")
    write_metaoptnet_cifar(str(root), "cifar-fs", per_class=8, n_classes={"train": 5, "val": 4, "test": 4})
    return root


@pytest.fixture(scope="session")
def syn_run(tmp_path_factory):
    """A finished tiny synthetic run (read-only for the tests: copy it to change it)."""
    out = tmp_path_factory.mktemp("runs") / "syn"
    assert main(["train", *SYN, "--out", str(out)]) == 0
    return out
