"""Configuration files: `metasparse train --config FILE [FILE ...]`, `--print-config`,
TrainConfig.from_file / to_file, the shipped configs/ and the reproduction script's checks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metasparse.api import TrainConfig, train
from metasparse.cli import main
from metasparse.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"dataset": "synthetic", "source_options": {"n_factors": 6, "factors_per_class": 2, "n_classes": [6, 4, 4],
                                                   "examples_per_class": 12},
        "backbone_options": {"hidden": [8]}, "head": "ridge", "epochs": 1, "batches_per_epoch": 2,
        "val_episodes": 2, "way": 3, "train_shot": 2, "query": 2, "val_shot": 2, "val_query": 2,
        "episodes_per_batch": 2}


def _printed(capsys, argv):
    capsys.readouterr()
    assert main(argv + ["--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_to_file_and_from_file_round_trip(tmp_path, suffix):
    cfg = TrainConfig(out=tmp_path / "run", **TINY, lr=0.01, num_workers=2)
    path = cfg.to_file(tmp_path / f"cfg{suffix}")
    again = TrainConfig.from_file(path, out=tmp_path / "other")
    assert again.out == tmp_path / "other" and again.lr == 0.01 and again.num_workers == 2
    assert again.run_config("cpu") == cfg.run_config("cpu")


def test_a_runs_config_json_is_a_config_file_and_flags_override(tmp_path, capsys):
    run = train(TrainConfig(out=tmp_path / "a", **TINY, device="cpu", progress=False))
    saved = json.loads((run.run_dir / "config.json").read_text())
    printed = _printed(capsys, ["train", "--config", str(run.run_dir / "config.json"), "--device", "cpu"])
    assert printed == {k: v for k, v in saved.items() if k not in ("example_shape", "n_features")}
    overridden = _printed(capsys, ["train", "--config", str(run.run_dir / "config.json"), "--epochs", "3",
                                   "--head", "protonet", "--device", "cpu"])
    assert overridden["settings"]["epochs"] == 3 and overridden["head"] == "protonet"
    assert overridden["settings"]["lr_milestones"] == [2, 3, 4]     # those of a new 3-epoch run
    # and it trains: the same configuration as the run it came from
    assert main(["train", "--config", str(run.run_dir / "config.json"), "--out", str(tmp_path / "b"),
                 "--device", "cpu", "--no-progress"]) == 0
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    assert {k: v for k, v in again.items() if k != "data_root"} == {k: v for k, v in saved.items() if k != "data_root"}


def test_bad_configuration_files_are_one_line_errors(tmp_path, capsys):
    cases = {"unknown.json": (json.dumps({"dataset": "synthetic", "learning_rate": 0.1}), "unknown option(s) ['learning_rate']"),
             "list.yaml": ("- 1\n- 2\n", "expected a mapping of options, got list"),
             "broken.json": ("{", "not a readable configuration"),
             "milestones.json": (json.dumps({"dataset": "synthetic", "settings": {"epochs": 10, "lr_milestones": [1, 2, 3]}}),
                                 "settings.lr_milestones [1, 2, 3] are not those of a new 10-epoch run")}
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        capsys.readouterr()
        assert main(["train", "--config", str(tmp_path / name), "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert main(["train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("dataset", ["mini-imagenet", "cifar-fs", "fc100"])
def test_shipped_protocols_are_metaoptnets_defaults(capsys, dataset):
    """configs/DATASET.yaml spells out MetaOptNet's protocol: the same run configuration as
    the built-in defaults of the dataset; the head files pick the heads of the table."""
    base = ["train", "--dataset", dataset, "--device", "cpu"]
    assert _printed(capsys, ["train", "--config", str(ROOT / "configs" / f"{dataset}.yaml"), "--device", "cpu"]) \
        == _printed(capsys, base + ["--seed", "0"])
    gs = _printed(capsys, ["train", "--config", str(ROOT / "configs" / f"{dataset}.yaml"),
                           str(ROOT / "configs" / "heads" / "gs-svm-0.01.yaml"), "--device", "cpu"])
    assert gs["head"] == "group-sparse-svm" and gs["head_options"] == {"lambda_ratio": 0.01}
    heads = sorted(p.stem for p in (ROOT / "configs" / "heads").glob("*.yaml"))
    assert heads == ["gs-svm-0.001", "gs-svm-0.01", "gs-svm-0.1", "protonet", "ridge", "svm"]


def test_reproduction_script_checks_its_arguments_before_training(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MS": f"{sys.executable} -m metasparse"}
    script = str(ROOT / "scripts" / "reproduce_metaoptnet.sh")
    data = tmp_path / "data"
    data.mkdir()
    for args, extra, needle in ((["tiered", str(data)], {}, "DATASET must be"),
                                (["cifar-fs", str(tmp_path / "nope")], {}, "is not a folder"),
                                (["cifar-fs", str(data)], {"EVAL_FLAGS": "--bogus"}, "bad EVAL_FLAGS"),
                                (["cifar-fs", str(data)], {"TRAIN_FLAGS": "--lr -1"}, "bad configuration")):
        r = subprocess.run(["bash", script, *args, str(tmp_path / "out")], env={**env, **extra},
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and needle in r.stderr, (args, extra, r.stderr[-800:])
    assert not (tmp_path / "out").exists()
