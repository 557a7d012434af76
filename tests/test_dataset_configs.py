"""configs/omniglot.yaml and configs/cub.yaml spell out the built-in defaults of their datasets
(the same run configuration as ``--dataset`` alone), and combine with the head files."""
import json
from pathlib import Path

import pytest

from metasparse.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _printed(capsys, argv):
    capsys.readouterr()
    assert main(argv + ["--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("dataset,backbone,way,optimizer", [("omniglot", "conv4", 20, "adam"),
                                                           ("cub", "resnet12", 5, "sgd")])
def test_config_file_is_the_datasets_defaults(capsys, dataset, backbone, way, optimizer):
    path = str(ROOT / "configs" / f"{dataset}.yaml")
    cfg = _printed(capsys, ["train", "--config", path, "--device", "cpu"])
    assert cfg == _printed(capsys, ["train", "--dataset", dataset, "--device", "cpu", "--seed", "0"])
    assert (cfg["dataset"], cfg["backbone"], cfg["way"], cfg["settings"]["optimizer"]) == (dataset, backbone, way,
                                                                                            optimizer)
    svm = _printed(capsys, ["train", "--config", path, str(ROOT / "configs" / "heads" / "svm.yaml"), "--device", "cpu"])
    assert svm["head"] == "svm"
