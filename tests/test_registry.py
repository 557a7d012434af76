"""The registry of heads, backbones and datasets: it agrees with the packages it names,
resolves aliases, checks options, and reports bad names / options as ConfigError."""
import importlib.util

import pytest

from episodes.sources import DATASETS as SOURCE_DATASETS
from metasparse import backbones, registry
from metasparse.engine.config import DATASET_DEFAULTS
from metasparse.errors import ConfigError


def test_names_agree_with_the_packages():
    assert set(registry.BACKBONES) == set(backbones.BACKBONES)
    assert list(registry.DATASETS) == list(SOURCE_DATASETS) == list(DATASET_DEFAULTS)
    assert [d.name for d in registry.DATASETS.values() if d.generated] == ["synthetic"]
    assert registry.DEFAULT_HEAD in registry.HEADS
    assert set(registry.SOLVERS) == {s for e in registry.HEADS.values() for s in e.solvers}


@pytest.mark.parametrize("entry", list(registry.HEADS.values()), ids=lambda e: e.name)
def test_every_head_name_and_alias_builds_its_class(entry):
    for name in (entry.name, *entry.aliases, entry.name.replace("-", "_").upper()):
        assert registry.head_entry(name) is entry
        assert type(registry.build_head(name)) is entry.cls
    for solver in entry.solvers:
        options = registry.head_options(entry.name, solver=solver)
        if solver == "qpth" and not all(importlib.util.find_spec(m) for m in ("learn2learn", "qpth")):
            with pytest.raises(ConfigError, match=r"pip install 'metasparse\[l2l\]'"):   # the extra, in one line
                registry.build_head(entry.name, options)
            continue
        assert type(registry.build_head(entry.name, options)) is entry.cls


def test_head_option_errors():
    with pytest.raises(ConfigError, match=r"--head 'nope': expected one of \['group-sparse-svm', 'svm', 'ridge', "):
        registry.head_entry("nope")
    with pytest.raises(ConfigError, match="--lambda-ratio applies to the group-sparse-svm head only, not --head ridge"):
        registry.head_options("ridge", lambda_ratio=0.1)
    with pytest.raises(ConfigError, match="--lambda-ratio must be >= 0"):
        registry.head_options("gs-svm", lambda_ratio=-1)
    with pytest.raises(ConfigError, match="--solver applies to the SVM heads only"):
        registry.head_options("protonet", solver="dual")
    with pytest.raises(ConfigError, match="--solver qpth solves the vanilla SVM"):
        registry.head_options("group-sparse-svm", solver="qpth")
    assert registry.head_options("group-sparse-svm", 0.2, "dual", {"tol": 1e-4}) == {
        "lambda_ratio": 0.2, "solver": "dual", "tol": 1e-4}
    with pytest.raises(ConfigError, match="head 'ridge': bad options"):
        registry.build_head("ridge", {"nope": 1})
    with pytest.raises(ConfigError, match="lambda_reg: expected a finite value > 0"):
        registry.build_head("ridge", {"lambda_reg": -1})
    assert issubclass(ConfigError, ValueError)


def test_backbones():
    with pytest.raises(ConfigError, match="--backbone 'vgg': expected resnet12, conv4 or mlp"):
        registry.backbone_entry("vgg")
    assert registry.backbone_entry("ResNet-12").name == "resnet12"
    assert registry.backbone_options_for_data("mlp", {"hidden": []}, [6]) == {"hidden": [], "in_dim": 6, "out_dim": 6}
    assert registry.backbone_options_for_data("conv4", {"dropblock_size": 2, "drop_rate": 0.1}, [3, 32, 32]) == {
        "in_channels": 3}
    with pytest.raises(ConfigError, match="--backbone resnet12 needs images.*use --backbone mlp"):
        registry.backbone_options_for_data("resnet12", {}, [6])
    with pytest.raises(ConfigError, match="--backbone mlp needs vector data"):
        registry.backbone_options_for_data("mlp", {}, [3, 32, 32])
    with pytest.raises(ConfigError, match="bad options"):
        registry.build_backbone("mlp", {"in_dim": 2, "out_dim": 2, "nope": 1})


def test_dataset_defaults_are_copies():
    d = registry.dataset_defaults("synthetic")
    d["backbone_options"]["hidden"].append(1)
    assert registry.dataset_defaults("synthetic")["backbone_options"]["hidden"] == [64, 64]
    with pytest.raises(ConfigError, match="--dataset 'imagenet': expected one of"):
        registry.dataset_entry("imagenet")
