"""End-to-end CLI tests on small fixture data in the real file formats (CIFAR-FS MetaOptNet
pickles written as Python 2 did): train, kill, resume, evaluate, compare, prepare; errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_formats import write_cifar100_archive, write_metaoptnet_cifar  # noqa: E402
from metasparse.cli import main  # noqa: E402
from metasparse.engine.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--backbone-options", '{"widths": [4, 4, 8, 8]}', "--way", "3", "--train-shot", "2", "--query", "2",
        "--episodes-per-batch", "2", "--val-episodes", "4", "--val-shot", "2", "--val-query", "2",
        "--no-progress", "--device", "cpu"]
EVAL = ["--episodes", "6", "--query", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifarfs")
    write_metaoptnet_cifar(str(root), "cifar-fs", per_class=8, n_classes={"train": 5, "val": 4, "test": 4})
    return root


def _train_args(data_root, out, *extra, epochs=2, batches=3):
    return ["train", "--dataset", "cifar-fs", "--data-root", str(data_root), "--head", "group-sparse-svm",
            "--lambda-ratio", "0.1", "--epochs", str(epochs), "--batches-per-epoch", str(batches),
            "--checkpoint-every", "1", "--out", str(out), *TINY, *extra]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """An uninterrupted run and a run stopped after 4 steps then resumed."""
    base = tmp_path_factory.mktemp("runs")
    full, cut = base / "full", base / "cut"
    assert main(_train_args(data_root, full)) == 0
    assert main(_train_args(data_root, cut, "--stop-after-steps", "4")) == 0
    assert load_checkpoint(cut / "last.pt")["progress"]["global_step"] == 4
    assert main(["train", "--out", str(cut), "--resume", "--no-progress", "--device", "cpu"]) == 0
    return full, cut


def _weights(path):
    return load_checkpoint(path)["model"]


def test_train_outputs_and_exact_resume(trained):
    full, cut = trained
    for run in (full, cut):
        for f in ("config.json", "metrics.jsonl", "last.pt", "best.pt"):
            assert (run / f).is_file(), f
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["dataset"] == "cifar-fs" and cfg["backbone_options"]["dropblock_size"] == 2
        assert cfg["settings"]["label_smoothing"] == 0.0 and cfg["n_features"] == 8 * 2 * 2
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == [1, 2]
    a, b = _weights(full / "last.pt"), _weights(cut / "last.pt")
    assert a.keys() == b.keys()
    for k in a:   # includes BN statistics and the DropBlock step counters
        assert torch.equal(a[k], b[k]), k


def test_sigkill_then_resume_matches_uninterrupted(data_root, tmp_path, trained):
    full, _ = trained
    out = tmp_path / "killed"
    # same intra-op thread count as this process: CPU reductions (and so the weights)
    # depend on it, and the reference run was trained here
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "metasparse", *_train_args(data_root, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "last.pt").exists(), proc.stderr.read().decode()[-2000:]
    assert main(["train", "--out", str(out), "--resume", "--no-progress", "--device", "cpu"]) == 0
    a, b = _weights(full / "last.pt"), _weights(out / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_evaluate_json_head_swap_and_episode_files(trained, tmp_path):
    full, _ = trained
    ck = str(full / "best.pt")
    out = tmp_path / "eval.json"
    eps = tmp_path / "eps.json"
    assert main(["evaluate", "--checkpoint", ck, "--shot", "1", "2", "--out", str(out), "--save-episodes", str(eps),
                 *EVAL]) == 0
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"1", "2"}
    r2 = res["results"]["2"]
    assert r2["episodes"] == 6 and 0 <= r2["accuracy"] <= 1 and r2["ci95"] >= 0
    assert 0 <= r2["features_used_fraction"] <= 1 and r2["n_features"] == 32
    # the saved 2-shot episodes give the same numbers
    out2 = tmp_path / "eval2.json"
    assert main(["evaluate", "--checkpoint", ck, "--episodes-file", str(tmp_path / "eps_2shot.json"),
                 "--out", str(out2), "--no-progress", "--device", "cpu"]) == 0
    assert json.loads(out2.read_text())["results"]["2"]["accuracy"] == pytest.approx(r2["accuracy"])
    # head swap at test time, and a stronger group-Lasso penalty uses fewer features
    out3 = tmp_path / "ridge.json"
    assert main(["evaluate", "--checkpoint", ck, "--shot", "2", "--head", "ridge", "--out", str(out3), *EVAL]) == 0
    ridge = json.loads(out3.read_text())
    assert ridge["head"] == "ridge" and "max_rel_gap" not in ridge["results"]["2"]   # nothing to converge
    assert r2["max_rel_gap"] >= 0 and 0 <= r2["unconverged_episodes"] <= 6
    out4 = tmp_path / "sparse.json"
    assert main(["evaluate", "--checkpoint", ck, "--shot", "2", "--lambda-ratio", "0.9", "--out", str(out4),
                 *EVAL]) == 0
    sparse = json.loads(out4.read_text())["results"]["2"]
    assert sparse["features_used_fraction"] < r2["features_used_fraction"]


def test_compare_outputs(trained, tmp_path):
    full, cut = trained
    out = tmp_path / "cmp"
    assert main(["compare", str(full / "best.pt"), str(cut / "best.pt"), "--heads", "group-sparse-svm", "svm",
                 "--lambda-ratios", "0.05", "0.5", "--shot", "2", "--out", str(out), *EVAL]) == 0
    res = json.loads((out / "compare.json").read_text())
    rows = res["shots"]["2"]
    assert len(rows) == 2 * 3
    assert rows[0]["paired_vs_reference"] is None
    for r in rows[1:]:
        p = r["paired_vs_reference"]
        assert {"mean_diff", "ci95", "t_pvalue", "wilcoxon_pvalue"} <= set(p)
        assert len(r["per_episode_accuracy"]) == 6 and len(r["feature_usage"]) == 32
        assert r["max_rel_gap"] >= 0 and 0 <= r["unconverged_episodes"] <= 6
    # the resumed run equals the uninterrupted one: zero paired difference for the same head
    same = [r for r in rows if r["name"] == "cut:group-sparse-svm(r=0.05)"][0]
    assert same["paired_vs_reference"]["mean_diff"] == 0.0
    assert "| model |" in (out / "compare.md").read_text()
    for f in ("feature_usage_2shot.png", "accuracy_vs_sparsity_2shot.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prepare_builds_loadable_cifar_fs(tmp_path):
    from episodes.sources import load_source
    archive = tmp_path / "cifar-100-python.tar.gz"
    write_cifar100_archive(str(archive), train_per_class=2, test_per_class=1)
    assert main(["prepare", "cifar-fs", "--cifar100", str(archive), "--out", str(tmp_path / "fs")]) == 0
    src = load_source("cifar-fs", str(tmp_path / "fs"), "test")
    assert len(src.classes) == 20 and tuple(src.data.shape[1:]) == (3, 32, 32)


def test_prepare_is_numpy_work_without_torch(tmp_path):
    """`metasparse prepare` (pickles from the CIFAR-100 archive) never imports torch."""
    archive = tmp_path / "cifar-100-python.tar.gz"
    write_cifar100_archive(str(archive), train_per_class=2, test_per_class=1)
    code = ("import sys; from metasparse.cli import main; "
            f"rc = main(['prepare', 'fc100', '--cifar100', {str(archive)!r}, '--out', {str(tmp_path / 'fc')!r}]); "
            "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "fc").iterdir()) == ["FC100_test.pickle", "FC100_train.pickle",
                                                                  "FC100_val.pickle"]


def test_prepare_replaces_only_with_force_and_clears_its_own_leftovers(tmp_path, capsys):
    """prepare used to replace existing files without --force; a killed prepare left its
    temporary files (118 MB each) that nothing removed, and could leave splits of two
    archives side by side."""
    archive = tmp_path / "cifar-100-python.tar.gz"
    write_cifar100_archive(str(archive), train_per_class=2, test_per_class=1)
    out = tmp_path / "fs"
    assert main(["prepare", "cifar-fs", "--cifar100", str(archive), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["prepare", "cifar-fs", "--cifar100", str(archive), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds CIFAR_FS_train.pickle" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / ".CIFAR_FS_val.pickle.k2j3h4.tmp").write_bytes(b"left by a killed prepare")
    (out / ".notes.tmp").write_text("mine")
    assert main(["prepare", "cifar-fs", "--cifar100", str(archive), "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".notes.tmp"] + sorted(before)
    # a failure while building (here: writing the last split) replaces nothing
    import episodes.sources.cifar as cifar
    real = cifar.pickle.dump
    calls = []

    def failing(obj, f, protocol):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")          # as a full disk raises it: no file name
        return real(obj, f, protocol=protocol)

    other = tmp_path / "other.tar.gz"                      # another archive: other images
    write_cifar100_archive(str(other), train_per_class=2, test_per_class=1, seed=9)
    cifar.pickle.dump = failing
    try:
        assert main(["prepare", "cifar-fs", "--cifar100", str(other), "--out", str(out), "--force"]) == 2
    finally:
        cifar.pickle.dump = real
    err = capsys.readouterr().err
    assert "CIFAR_FS_test.pickle: No space left on device" in err and "bug" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".notes.tmp"} == before


# ----------------------------------------------------------------------------- errors
def _err(capsys, argv):
    rc = main(argv)
    msg = capsys.readouterr().err.strip()
    assert rc == 2 and msg.count("\n") == 0 and "error:" in msg, msg
    return msg


def test_clear_errors(trained, tmp_path, capsys, data_root):
    full, _ = trained
    # wrong checkpoint: not a checkpoint at all, a plain state dict, a missing file
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert "not a loadable metasparse checkpoint" in _err(capsys, ["evaluate", "--checkpoint", str(junk), *EVAL])
    plain = tmp_path / "plain.pt"
    torch.save({"embedding": {}, "head": {}}, plain)
    assert "not a metasparse checkpoint" in _err(capsys, ["evaluate", "--checkpoint", str(plain), *EVAL])
    assert "does not exist" in _err(capsys, ["evaluate", "--checkpoint", str(tmp_path / "nope.pt"), *EVAL])
    # a checkpoint whose weights do not fit its declared backbone
    ck = load_checkpoint(full / "best.pt")
    ck["config"]["backbone_options"]["widths"] = [4, 4, 8, 16]
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, {k: v for k, v in ck.items() if k not in ("format", "version", "path")})
    assert "do not fit backbone" in _err(capsys, ["evaluate", "--checkpoint", str(bad), *EVAL])
    # contradictory flags
    assert "--lambda-ratio applies to the group-sparse-svm head only" in _err(
        capsys, ["evaluate", "--checkpoint", str(full / "best.pt"), "--head", "ridge", "--lambda-ratio", "0.1", *EVAL])
    assert "contradicts --episodes-file" in _err(
        capsys, ["evaluate", "--checkpoint", str(full / "best.pt"), "--episodes-file", "x.json", "--shot", "1"])
    assert "already holds a run" in _err(capsys, _train_args(data_root, full))
    assert "contradicts the run being resumed" in _err(
        capsys, ["train", "--out", str(full), "--resume", "--lr", "0.5"])
    assert "has no config.json" in _err(capsys, ["train", "--out", str(tmp_path / "empty"), "--resume"])
    assert "--solver qpth solves the vanilla SVM" in _err(
        capsys, _train_args(data_root, tmp_path / "q", "--solver", "qpth"))
    assert "needs images" in _err(capsys, ["train", "--dataset", "synthetic", "--backbone", "resnet12",
                                           "--out", str(tmp_path / "s"), "--no-progress"])
    assert "--data-root is required" in _err(capsys, ["train", "--dataset", "cifar-fs", "--out", str(tmp_path / "d")])


def test_module_entry_point_and_console_script():
    r = subprocess.run([sys.executable, "-m", "metasparse", "--help"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "train" in r.stdout and "compare" in r.stdout
    cfg = (ROOT / "setup.cfg").read_text()
    assert "metasparse = metasparse.cli:main" in cfg


def test_train_synthetic_with_tensorboard_and_evaluate(tmp_path):
    out = tmp_path / "syn"
    src = '{"n_factors": 6, "factors_per_class": 2, "n_classes": [6, 4, 4], "examples_per_class": 20}'
    assert main(["train", "--dataset", "synthetic", "--source-options", src, "--head", "ridge", "--epochs", "1",
                 "--batches-per-epoch", "2", "--val-episodes", "2", "--way", "3", "--query", "3", "--tensorboard",
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["backbone"] == "mlp" and cfg["backbone_options"]["in_dim"] == 6 and cfg["settings"]["optimizer"] == "adam"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert main(["evaluate", "--checkpoint", str(out), "--shot", "2", "--out", str(tmp_path / "e.json"), *EVAL]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["results"]["2"]["n_features"] == 6


def test_zero_counts_are_rejected_not_replaced_by_defaults(trained, tmp_path, capsys):
    """`--way 0` etc. must be an error, not silently the dataset default (0 is falsy)."""
    full, _ = trained
    for flag in ("--way", "--train-shot", "--query", "--episodes-per-batch", "--val-shot", "--val-query"):
        msg = _err(capsys, ["train", "--dataset", "synthetic", flag, "0", "--out", str(tmp_path / "z"),
                            "--no-progress", "--device", "cpu"])
        assert f"{flag} must be an integer >= {2 if flag == '--way' else 1}, got 0" in msg, msg
    assert not (tmp_path / "z" / "last.pt").exists()
    for flag in ("--episodes", "--way", "--query"):
        msg = _err(capsys, ["evaluate", "--checkpoint", str(full / "best.pt"), "--shot", "1",
                            *[a for a in EVAL if a not in ("--episodes", "6", "--query", "2")], flag, "0"])
        assert f"{flag} must be >= 1, got 0" in msg, msg


def test_strict_solver_exits_with_one_line_and_the_run_stays_resumable(tmp_path, capsys):
    """A head whose solver stops short (one iteration, no smoothing): --strict-solver ends the run
    with one line and exit status 1 at that step; last.pt stays the last good checkpoint and
    resumes without the flag."""
    from metasparse.heads import SolverConvergenceWarning
    out = tmp_path / "strict"
    src = '{"n_factors": 6, "factors_per_class": 2, "n_classes": [6, 4, 4], "examples_per_class": 20}'
    head = '{"lambda1": 0.01, "dual_reg": 0.0, "max_iter": 1}'
    args = ["train", "--dataset", "synthetic", "--source-options", src, "--head", "group-sparse-svm",
            "--head-options", head, "--epochs", "1",
            "--batches-per-epoch", "2", "--val-episodes", "0", "--way", "3", "--query", "3",
            "--episodes-per-batch", "2", "--checkpoint-every", "1", "--out", str(out), "--no-progress",
            "--device", "cpu"]
    assert main([*args, "--stop-after-steps", "1"]) == 0
    capsys.readouterr()
    rc = main(["train", "--out", str(out), "--resume", "--strict-solver", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0, err
    assert err.startswith("metasparse train: error: epoch 1/1, batch 2/2: ") and "episodes stopped short" in err
    assert "--resume --no-strict-solver" in err
    assert load_checkpoint(out / "last.pt")["progress"]["global_step"] == 1
    with pytest.warns(SolverConvergenceWarning, match=r"epoch 1/1: \d of 4 episodes stopped short"):
        assert main(["train", "--out", str(out), "--resume", "--no-strict-solver", "--no-progress",
                     "--device", "cpu"]) == 0
    epoch = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert epoch["kind"] == "epoch" and 0 < epoch["train_unconverged_fraction"] <= 1
    ev = tmp_path / "e.json"
    with pytest.warns(SolverConvergenceWarning, match=r"2-shot: \d+ of 6 episodes"):
        assert main(["evaluate", "--checkpoint", str(out), "--shot", "2", "--out", str(ev), *EVAL]) == 0
    r = json.loads(ev.read_text())["results"]["2"]
    assert r["unconverged_episodes"] > 0 and r["max_rel_gap"] > 1e-5


@pytest.mark.parametrize("exc", [ValueError, KeyError, OSError])
def test_internal_errors_keep_their_traceback(trained, monkeypatch, capsys, exc):
    """Only metasparse's own error types (and file system errors on a named file) are user
    errors (exit 2); a ValueError or KeyError from inside the package is a bug: its
    traceback, then a line saying so, exit status 1."""
    import metasparse.api

    def bug(config):
        raise exc("internal")
    monkeypatch.setattr(metasparse.api, "evaluate", bug)
    assert main(["evaluate", "--checkpoint", str(trained[0] / "best.pt"), *EVAL]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and f"{exc.__name__}: " in err and "internal" in err
    assert err.strip().splitlines()[-1] == ("metasparse evaluate: this is a bug in metasparse; please report it "
                                            "with the traceback above")


def test_prepare_reads_torchvisions_extracted_folder(tmp_path):
    """torchvision's datasets.CIFAR100 leaves cifar-100-python/ extracted; prepare used to
    refuse it with 'no such file'. Same files as from the archive."""
    import tarfile
    archive = tmp_path / "cifar-100-python.tar.gz"
    write_cifar100_archive(str(archive), train_per_class=2, test_per_class=1)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    assert main(["prepare", "fc100", "--cifar100", str(archive), "--out", str(tmp_path / "a")]) == 0
    for folder in (tmp_path / "extracted", tmp_path / "extracted" / "cifar-100-python"):
        out = tmp_path / ("b" + str(len(folder.parts)))
        assert main(["prepare", "fc100", "--cifar100", str(folder), "--out", str(out)]) == 0
        expected = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
        assert {p.name: p.read_bytes() for p in out.iterdir()} == expected
