"""A run directory is a resumable run or not a run: everything is checked before the first
file is written, the first checkpoint is step 0, a failure before it removes only what the
command created, and resuming cleans the run's orphan temporary files."""
import json
import shutil

import numpy as np
import pytest
import torch

from reliability_helpers import SYN, TINY_IMAGES, one_line_error, run_cli, snapshot
from metasparse.engine.checkpoint import load_checkpoint
from metasparse.engine.runlock import LOCK_NAME


def _tiny(root, out, *extra):
    return ["train", "--dataset", "cifar-fs", "--data-root", root, "--out", out, *TINY_IMAGES, *extra]


def _write_cifar(root, sizes, per_class=8, val_per_class=None):
    """CIFAR-FS-named MetaOptNet pickles (Python 2 format) with the given image size per split."""
    from fixtures_formats import write_py2_pickle
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, ids in (("train", range(5)), ("val", range(5, 9)), ("test", range(9, 13))):
        n = per_class if split != "val" or val_per_class is None else val_per_class
        labels = [c for c in ids for _ in range(n)]
        data = rng.integers(0, 256, (len(labels), sizes[split], sizes[split], 3), dtype=np.uint8)
        write_py2_pickle(str(root / f"CIFAR_FS_{split}.pickle"), {"data": data, "labels": labels})
    return root


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    return _write_cifar(tmp_path_factory.mktemp("mixed"), {"train": 84, "val": 32, "test": 32})


@pytest.fixture(scope="module")
def no_val(tmp_path_factory, cifar_root):
    root = tmp_path_factory.mktemp("noval")
    shutil.copy(cifar_root / "CIFAR_FS_train.pickle", root)
    return root


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    return _write_cifar(tmp_path_factory.mktemp("tiny"), {"train": 4, "val": 4, "test": 4})


@pytest.fixture(scope="module")
def small_val_classes(tmp_path_factory):
    return _write_cifar(tmp_path_factory.mktemp("smallval"), {"train": 32, "val": 32, "test": 32}, val_per_class=3)


CASES = {   # name -> (extra flags, data fixture, expected pieces of the message)
    "no val split": ([], "no_val", ["no val split under"]),
    "way > classes": (["--way", "6"], "cifar_root", ["way N=6 exceeds the 5 classes"]),
    "class too small": (["--train-shot", "5", "--query", "4"], "cifar_root",
                        ["cifar-fs/train: class 0 has 8 examples, fewer than K+Q=5+4=9"]),
    "val class too small": ([], "small_val_classes", ["cifar-fs/val: class 5 has 3 examples"]),
    "lr inf": (["--lr", "inf"], "cifar_root", ["--lr must be a finite number > 0, got inf"]),
    "lr nan": (["--lr", "nan"], "cifar_root", ["--lr must be a finite number > 0"]),
    "lr negative": (["--lr", "-0.1"], "cifar_root", ["--lr must be a finite number > 0"]),
    "weight decay inf": (["--weight-decay", "inf"], "cifar_root", ["--weight-decay"]),
    "images too small": ([], "tiny_images", ["(4x4) are too small for --backbone resnet12"]),
    "train 84 val 32": ([], "mixed_sizes", ["val split", "(3, 32, 32)", "(3, 84, 84)"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_failures_before_the_first_checkpoint_leave_no_run_directory(case, request, tmp_path, capsys):
    extra, data, needles = CASES[case]
    root = request.getfixturevalue(data)
    out = tmp_path / "a" / "b" / "run"
    one_line_error(capsys, _tiny(root, out, *extra), *needles)
    assert not (tmp_path / "a").exists()    # the folders this command created are gone
    # a folder that existed keeps exactly what it held
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    before = snapshot(mine)
    one_line_error(capsys, _tiny(root, mine, *extra), *needles)
    assert snapshot(mine) == before


def test_interrupt_before_the_first_checkpoint_removes_the_run(tmp_path, capsys, monkeypatch):
    import metasparse.api.training as training

    def interrupted(*args, **kwargs):
        assert (out / "config.json").exists() and not (out / "last.pt").exists()
        raise KeyboardInterrupt
    out = tmp_path / "new" / "run"
    monkeypatch.setattr(training, "run_engine", interrupted)
    assert run_cli(capsys, ["train", *SYN, "--out", out])[0] == 130
    assert not (tmp_path / "new").exists()


def test_interrupt_at_the_first_step_leaves_a_run_that_resumes_exactly(tmp_path, capsys, monkeypatch, syn_run):
    import metasparse.engine.train as engine
    out = tmp_path / "run"
    real = engine.smoothed_cross_entropy

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(engine, "smoothed_cross_entropy", interrupted)
    assert run_cli(capsys, ["train", *SYN, "--out", out])[0] == 130
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "last.pt", "metrics.jsonl"]
    progress = load_checkpoint(out / "last.pt")["progress"]
    assert (progress["epoch"], progress["step"], progress["global_step"]) == (0, 0, 0)
    # a plain re-run is refused (the folder holds a run); --resume finishes it exactly
    one_line_error(capsys, ["train", *SYN, "--out", out], "already holds a run; pass --resume")
    monkeypatch.setattr(engine, "smoothed_cross_entropy", real)
    assert run_cli(capsys, ["train", "--out", out, "--resume", "--no-progress", "--device", "cpu"])[0] == 0
    a, b = load_checkpoint(out / "last.pt")["model"], load_checkpoint(syn_run / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "metrics.jsonl").read_text().count("\n") == (syn_run / "metrics.jsonl").read_text().count("\n")


def test_config_without_last_checkpoint_resumes_from_step_0(tmp_path, capsys, syn_run):
    """The one window where a kill leaves config.json without last.pt: --resume starts the run."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(syn_run / "config.json", out)
    assert run_cli(capsys, ["train", "--out", out, "--resume", "--no-progress", "--device", "cpu"])[0] == 0
    a, b = load_checkpoint(out / "last.pt")["model"], load_checkpoint(syn_run / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # but a run that went further (best.pt) and lost last.pt is not restarted over its files
    gone = tmp_path / "gone"
    shutil.copytree(syn_run, gone)
    (gone / "last.pt").unlink()
    before = snapshot(gone)
    one_line_error(capsys, ["train", "--out", gone, "--resume"], "has no last.pt to resume from")
    assert snapshot(gone) == before


@pytest.mark.parametrize("name", ["metrics.jsonl", "best.pt"])
def test_files_of_a_folder_that_is_not_a_run_are_not_replaced(name, tmp_path, capsys):
    out = tmp_path / "folder"
    out.mkdir()
    (out / name).write_text("my own records\n")
    before = snapshot(out)
    one_line_error(capsys, ["train", *SYN, "--out", out], f"holds {name} but no run", "choose a new --out")
    assert snapshot(out) == before


def test_out_paths_that_cannot_be_a_run_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, ["train", *SYN, "--out", ""], "--out '': expected a run directory")
    assert list(tmp_path.iterdir()) == []
    f = tmp_path / "file"
    f.write_text("x")
    one_line_error(capsys, ["train", *SYN, "--out", f], f"--out {f}: is a file")
    one_line_error(capsys, ["train", *SYN, "--out", f / "sub"], f"{f} is a file, not a folder")
    assert f.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_resume_removes_the_runs_orphan_temp_files_only(tmp_path, capsys, syn_run):
    out = tmp_path / "run"
    shutil.copytree(syn_run, out)
    orphans = [".last.pt.k3j4h5.tmp", ".best.pt.abc.tmp", ".metrics.jsonl.x1.tmp", ".config.json.q.tmp"]
    for name in orphans:
        (out / name).write_bytes(b"half a file")
    (out / ".notes.tmp").write_text("mine")          # not a temp file of the run
    (out / "last.pt.bak.tmp").write_text("mine too")
    assert run_cli(capsys, ["train", "--out", out, "--resume", "--no-progress", "--device", "cpu"])[0] == 0
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted([".notes.tmp", "last.pt.bak.tmp", "best.pt", "config.json", "last.pt", "metrics.jsonl"])
    assert LOCK_NAME not in left


def test_damaged_config_json_is_one_line_naming_the_file(tmp_path, capsys, syn_run):
    out = tmp_path / "run"
    shutil.copytree(syn_run, out)
    cfg = json.loads((out / "config.json").read_text())
    for text, needle in (("{\n", "not valid JSON"), ("[1, 2]", "expected a JSON object"),
                         (json.dumps({k: v for k, v in cfg.items() if k != "dataset"}), "lacks ['dataset']"),
                         (json.dumps({**cfg, "way": "three"}), "way must be an integer >= 2, got 'three'"),
                         (json.dumps({**cfg, "settings": {**cfg["settings"], "lr": "fast"}}), "settings.lr"),
                         (json.dumps({**cfg, "settings": {**cfg["settings"], "lr": float("inf")}}),
                          "settings.lr must be a finite number > 0"),
                         (json.dumps({**cfg, "settings": {**cfg["settings"], "bogus": 1}}), "unknown key(s) ['bogus']"),
                         (b"\xff\xfe", "not a text file")):
        if isinstance(text, bytes):
            (out / "config.json").write_bytes(text)
        else:
            (out / "config.json").write_text(text)
        before = snapshot(out)
        one_line_error(capsys, ["train", "--out", out, "--resume", "--no-progress"], f"{out / 'config.json'}: ",
                       needle)
        assert snapshot(out) == before


def test_resume_onto_weights_of_another_shape(tmp_path, capsys, syn_run):
    out = tmp_path / "run"
    shutil.copytree(syn_run, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["backbone_options"]["hidden"] = [16]
    (out / "config.json").write_text(json.dumps(cfg))
    before = snapshot(out)
    one_line_error(capsys, ["train", "--out", out, "--resume", "--no-progress"],
                   f"{out / 'last.pt'}: does not fit the run's config.json", "size mismatch")
    assert snapshot(out) == before


def test_truncated_checkpoints_are_one_line_without_torch_advice(tmp_path, capsys, syn_run):
    out = tmp_path / "run"
    shutil.copytree(syn_run, out)
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])
    before = snapshot(out)
    line = one_line_error(capsys, ["train", "--out", out, "--resume", "--no-progress"],
                          f"{out / 'last.pt'}: not a loadable metasparse checkpoint")
    assert "weights_only" not in line and snapshot(out) == before
    (out / "best.pt").write_bytes(b"")
    line = one_line_error(capsys, ["evaluate", "--checkpoint", out / "best.pt", "--no-progress", "--device", "cpu"],
                          f"{out / 'best.pt'}: not a loadable metasparse checkpoint")
    assert "weights_only" not in line


def test_resume_keeps_every_metrics_line_but_the_torn_last_one(tmp_path, capsys):
    """--resume used to rewrite metrics.jsonl with only the lines before the first one that
    did not parse (443 of 454 records lost in one case). Now: the records after the
    checkpoint and a torn last line are dropped, every other line is kept byte for byte."""
    args = [a if prev != "--batches-per-epoch" else "6" for prev, a in zip([None] + SYN[:-1], SYN)]
    out = tmp_path / "run"
    assert run_cli(capsys, ["train", *args, "--epochs", "2", "--log-every", "1", "--out", out])[0] == 0
    path = out / "metrics.jsonl"
    lines = path.read_bytes().splitlines()
    assert len(lines) > 6
    damaged = lines[:2] + [b"{not json \xff"] + lines[2:] + [b'{"kind": "step", "glob']     # a torn last line
    path.write_bytes(b"\n".join(damaged) + b"\n")
    assert run_cli(capsys, ["train", "--out", out, "--resume", "--epochs", "3", "--no-progress"])[0] == 0
    after = path.read_bytes().splitlines()
    assert after[:len(damaged) - 1] == damaged[:-1]             # all kept, in order, the damaged one too
    assert json.loads(after[-1])["epoch"] == 3 and damaged[-1] not in after
