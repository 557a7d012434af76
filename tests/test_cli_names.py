"""Names users type (dataset aliases), result files named after what was evaluated and never
overwritten without --force, and output locations checked before the work starts."""
import json
import os
import sys

import pytest

from metasparse.api import TrainConfig, train
from metasparse.api.outputs import evaluation_file_name
from metasparse.cli import main
from metasparse.registry import dataset_name

SOURCE = {"n_factors": 6, "factors_per_class": 2, "n_classes": [6, 4, 4], "examples_per_class": 20}
EVAL = ["--episodes", "3", "--query", "2", "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("typed,canonical", [
    ("miniImageNet", "mini-imagenet"), ("mini_imagenet", "mini-imagenet"), ("MINI-IMAGENET", "mini-imagenet"),
    ("CIFAR_FS", "cifar-fs"), ("cifarfs", "cifar-fs"), ("Cifar-FS", "cifar-fs"), ("FC100", "fc100"),
    ("fc-100", "fc100"), ("Synthetic", "synthetic")])
def test_dataset_aliases(typed, canonical):
    assert dataset_name(typed) == canonical
    assert TrainConfig(out="unused", dataset=typed, data_root="unused").run_config()["dataset"] == canonical


def _err(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_dataset_aliases_on_the_command_line(tmp_path, capsys):
    assert "--data-root is required for --dataset mini-imagenet" in _err(
        capsys, ["train", "--dataset", "miniImageNet", "--out", str(tmp_path / "x"), "--no-progress"])
    assert "expected one of" in _err(capsys, ["train", "--dataset", "imagenet-1k", "--out", str(tmp_path / "y")])
    assert "cifar-100-python.tar.gz" in _err(capsys, ["prepare", "CIFAR_FS", "--cifar100", str(tmp_path / "no.tar.gz"),
                                                      "--out", str(tmp_path / "fs")])
    out = tmp_path / "syn"
    assert main(["train", "--dataset", "SYNTHETIC", "--source-options", json.dumps(SOURCE), "--epochs", "1",
                 "--batches-per-epoch", "1", "--val-episodes", "0", "--way", "3", "--query", "2",
                 "--episodes-per-batch", "2", "--head", "protonet", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    assert json.loads((out / "config.json").read_text())["dataset"] == "synthetic"


def test_evaluation_file_names_differ_with_what_was_evaluated():
    base = dict(checkpoint="r/best.pt", head="group-sparse-svm", head_options={"lambda_ratio": 0.01},
                split="test", shots=[1, 5], seed=0)
    name = evaluation_file_name(**base)
    assert name == "eval_best_group-sparse-svm_r0.01_test_1-5shot_seed0.json"
    variants = [dict(checkpoint="r/last.pt"), dict(head="svm", head_options={}),
                dict(head_options={"lambda_ratio": 0.1}), dict(split="val"), dict(shots=[5]), dict(seed=1),
                dict(episodes_file="eps.json"), dict(other={"way": 10}), dict(other={"query": 5}),
                dict(head_options={"lambda_ratio": 0.01, "lambda2": 1.0})]
    names = {evaluation_file_name(**{**base, **v}) for v in variants}
    assert len(names) == len(variants) and name not in names


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(TrainConfig(out=tmp_path_factory.mktemp("names") / "run", dataset="synthetic", source_options=SOURCE,
                             head="group-sparse-svm", lambda_ratio=0.1, epochs=1, batches_per_epoch=1, val_episodes=0,
                             way=3, query=2, episodes_per_batch=2, device="cpu", progress=False))


def test_evaluate_default_names_and_force(run, capsys):
    ck = str(run.run_dir / "best.pt")
    assert main(["evaluate", "--checkpoint", ck, "--shot", "2", *EVAL]) == 0
    assert main(["evaluate", "--checkpoint", ck, "--shot", "3", *EVAL]) == 0
    assert main(["evaluate", "--checkpoint", ck, "--shot", "2", "--lambda-ratio", "0.5", *EVAL]) == 0
    files = sorted(p.name for p in run.run_dir.glob("eval_*.json"))
    # --episodes 3 --query 2 are not the defaults: a hash of them ends the names
    assert [f[:-len("_12345678.json")] for f in files] == ["eval_best_group-sparse-svm_r0.1_test_2shot_seed0",
                                                           "eval_best_group-sparse-svm_r0.1_test_3shot_seed0",
                                                           "eval_best_group-sparse-svm_r0.5_test_2shot_seed0"]
    first = run.run_dir / files[0]
    first.write_text('{"mine": 1}\n')
    capsys.readouterr()
    err = _err(capsys, ["evaluate", "--checkpoint", ck, "--shot", "2", *EVAL])
    assert "already holds a result; pass --force" in err and files[0] in err
    assert json.loads(first.read_text()) == {"mine": 1}          # untouched
    assert main(["evaluate", "--checkpoint", ck, "--shot", "2", "--force", *EVAL]) == 0
    assert json.loads(first.read_text())["results"]["2"]["episodes"] == 3


def _broken_checkpoint_data(run, tmp_path):
    """A copy of the run whose data root no longer exists: any work would fail on the data,
    so an error about --out proves the output was checked first."""
    import torch
    ck = torch.load(run.run_dir / "best.pt", weights_only=True)
    ck["config"]["dataset"] = "cifar-fs"
    ck["config"]["data_root"] = str(tmp_path / "gone")
    ck["config"]["source_options"] = {}
    path = tmp_path / "ck" / "best.pt"
    path.parent.mkdir()
    torch.save(ck, path)
    return str(path)


@pytest.mark.parametrize("cmd", ["evaluate", "compare"])
def test_output_location_checked_before_the_work(run, tmp_path, capsys, cmd):
    ck = _broken_checkpoint_data(run, tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "compare.json").write_text("{}")

    def argv(out):
        return (["evaluate", "--checkpoint", ck] if cmd == "evaluate" else ["compare", ck]) + ["--out", str(out), *EVAL]

    under = _err(capsys, argv(afile / "sub" / "r.json"))
    assert f"{afile} is a file, not a folder" in under
    if cmd == "evaluate":
        assert "is a folder; expected the path of a results file" in _err(capsys, argv(folder))
    else:
        assert "is a file; expected a folder" in _err(capsys, argv(afile))
        assert "already holds results (compare.json); pass --force" in _err(capsys, argv(folder))
    if sys.platform != "win32" and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            assert "is not writable" in _err(capsys, argv(locked / "new" / "r.json"))
        finally:
            locked.chmod(0o700)
    # with a good location the work starts and fails on the data, as it should
    assert "gone" in _err(capsys, argv(tmp_path / "ok" / "r.json"))
    assert not (tmp_path / "ok").exists()
