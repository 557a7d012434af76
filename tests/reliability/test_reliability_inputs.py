"""Hostile input in the real formats: each is one line naming the file or flag, exit
status 2, no traceback, no code run, nothing written or changed; bad data that used to be
accepted is refused; valid files that used to be refused load."""
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from metasparse.heads import SolverConvergenceWarning
from reliability_helpers import (EVAL, SYN, SYN_SOURCE, TINY_IMAGES, main, one_line_error, run_cli, snapshot,
                                 subprocess_env)


class _Runs:
    """A pickled object that, if ever called, creates a folder (the marker of code run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _tiny(root, out, *extra, dataset="cifar-fs"):
    return ["train", "--dataset", dataset, "--data-root", root, "--out", out, *TINY_IMAGES, *extra]


def _train_fails(capsys, root, tmp_path, *needles, dataset="cifar-fs"):
    """A training on data ``root`` fails with one line; ``root`` unchanged, no run left."""
    before = snapshot(root)
    out = tmp_path / "run"
    line = one_line_error(capsys, _tiny(root, out, dataset=dataset), *needles)
    assert snapshot(root) == before and not out.exists()
    return line


# ------------------------------------------------------------------ dataset files
def test_dataset_pickle_naming_a_callable_is_refused_without_running_it(tmp_path, capsys, cifar_root):
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    marker = tmp_path / "code-ran"
    with open(root / "CIFAR_FS_train.pickle", "wb") as f:
        pickle.dump({"data": _Runs(marker), "labels": []}, f, protocol=2)
    _train_fails(capsys, root, tmp_path, f"{root / 'CIFAR_FS_train.pickle'}: refusing to load global 'posix.mkdir'")
    assert not marker.exists()


def test_corrupt_png_in_a_learn2learn_folder(tmp_path, capsys):
    from fixtures_formats import write_l2l_cifarfs_folders
    root = tmp_path / "l2l"
    write_l2l_cifarfs_folders(str(root), per_class=4, n_classes={"train": 4, "val": 3, "test": 3})
    folder = root / "cifarfs" / "processed" / "train" / "apple"
    bad = sorted(folder.iterdir())[1]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    _train_fails(capsys, root, tmp_path, f"{bad}: not a readable PNG image")
    # a small PNG declaring 14000 x 14000 pixels (PIL's DecompressionBombError was uncaught)
    from PIL import Image
    shutil.copy(sorted(folder.iterdir())[0], bad)
    bomb = sorted(folder.iterdir())[2]
    Image.new("L", (14000, 14000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 1_000_000
    _train_fails(capsys, root, tmp_path, f"{bomb}: declares an image of more than", "refused before decoding")
    Image.new("L", (2000, 2000)).save(bomb, optimize=True)      # under PIL's limit, over ours
    _train_fails(capsys, root, tmp_path, f"{bomb}: declares a 2000x2000 image")


def test_learn2learn_cache_where_a_class_lists_another_class_images(tmp_path, capsys):
    from fixtures_formats import write_l2l_miniimagenet
    root = tmp_path / "l2l"
    written = write_l2l_miniimagenet(str(root), per_class=6, size=84)
    d = written["train"]
    wnids = sorted(d["class_dict"])
    d["class_dict"][wnids[1]] = d["class_dict"][wnids[1]][:-1] + [d["class_dict"][wnids[0]][0]]
    with open(root / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump(d, f, protocol=4)
    _train_fails(capsys, root, tmp_path, "mini-imagenet-cache-train.pkl: image", wnids[0], wnids[1],
                 "each image must belong to one class", dataset="mini-imagenet")
    d["class_dict"][wnids[1]] = ["0", "one"]     # not integers: named, with the file
    with open(root / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump(d, f, protocol=4)
    _train_fails(capsys, root, tmp_path, f"{root / 'mini-imagenet-cache-train.pkl'}: class_dict[{wnids[1]!r}] "
                 f"must be a list of integer image indices", dataset="mini-imagenet")


def test_protocol_2_pickles_with_empty_byte_strings_and_arrays_load(tmp_path):
    """Python 3 writes b'' (and the buffer of a zero-length array) at protocol 2 as
    __builtin__.bytes(): a valid dataset file must load."""
    import episodes
    from fixtures_formats import write_metaoptnet_cifar
    root = tmp_path / "data"
    written = write_metaoptnet_cifar(str(root), "cifar-fs", per_class=4, n_classes={"train": 3, "val": 3, "test": 3})
    d = {**written["train"], "note": b"", "empty": np.zeros((0, 32, 32, 3), np.uint8), "buf": bytearray()}
    with open(root / "CIFAR_FS_train.pickle", "wb") as f:
        pickle.dump(d, f, protocol=2)
    assert b"bytes" in (root / "CIFAR_FS_train.pickle").read_bytes()
    source = episodes.load_source("cifar-fs", root, "train")
    assert torch.equal(source.data, torch.from_numpy(d["data"]).permute(0, 3, 1, 2))
    # but bytes() may not be called with a size (it would allocate it)
    from episodes.sources.safe_pickle import UnsafePickleError, loads_pickle

    class Huge:
        def __reduce__(self):
            return (bytes, (10 ** 12,))
    with pytest.raises(UnsafePickleError, match="not from a size"):
        loads_pickle(pickle.dumps(Huge(), protocol=2), "huge.pickle")


# ------------------------------------------------------------------ prepare
def _archive(path, fine_shift=0, evil=None):
    """A cifar-100-python.tar.gz (Python 2 pickles); fine label 0 becomes ``fine_shift`` + 0 ..."""
    from fixtures_formats import py2_pickle_dumps, write_cifar100_archive
    parts = write_cifar100_archive(str(path), train_per_class=1, test_per_class=1)
    if fine_shift or evil:
        for member in ("train", "test"):
            parts[member]["fine_labels"] = [f + fine_shift if f == 99 else f for f in parts[member]["fine_labels"]]
        with tarfile.open(path, "w:gz") as tar:
            for name, obj in parts.items():
                data = pickle.dumps(evil, protocol=2) if evil is not None and name == "train" else py2_pickle_dumps(obj)
                info = tarfile.TarInfo(f"cifar-100-python/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_prepare_refuses_hostile_archives_and_writes_nothing(tmp_path, capsys):
    good = _archive(tmp_path / "good.tar.gz")
    out = tmp_path / "out"
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    one_line_error(capsys, ["prepare", "cifar-fs", "--cifar100", truncated, "--out", out],
                   f"{truncated}: truncated or corrupt archive", "download cifar-100-python.tar.gz again")
    marker = tmp_path / "code-ran"
    evil = _archive(tmp_path / "evil.tar.gz", evil=_Runs(marker))
    one_line_error(capsys, ["prepare", "cifar-fs", "--cifar100", evil, "--out", out],
                   f"{evil}:cifar-100-python/train: refusing to load global 'posix.mkdir'")
    assert not marker.exists()
    shifted = _archive(tmp_path / "labels.tar.gz", fine_shift=1)     # fine label 100: silently dropped before
    one_line_error(capsys, ["prepare", "fc100", "--cifar100", shifted, "--out", out],
                   f"{shifted}: 'fine_labels' holds 2 label(s) outside 0..99 (e.g. 100)")
    assert not out.exists()
    afile = tmp_path / "afile"
    afile.write_text("mine")
    one_line_error(capsys, ["prepare", "cifar-fs", "--cifar100", good, "--out", afile], f"--out {afile}: is a file")
    one_line_error(capsys, ["prepare", "cifar-fs", "--cifar100", good, "--out", afile / "x"],
                   f"{afile} is a file, not a folder")
    one_line_error(capsys, ["prepare", "cifar-fs", "--cifar100", good, "--out", ""], "--out ''")
    assert afile.read_text() == "mine"


# ------------------------------------------------------------------ flags
def test_flags_a_user_can_get_wrong(tmp_path, capsys, syn_run, cifar_root):
    out = tmp_path / "run"
    one_line_error(capsys, ["train", *SYN, "--device", "tpu", "--out", out], "--device 'tpu'")
    one_line_error(capsys, ["evaluate", "--checkpoint", syn_run, *EVAL[:-2], "--device", "tpu"], "--device 'tpu'")
    src = SYN.index("--source-options") + 1
    for options, needle in (('{"bogus": 1}', "takes no option(s) ['bogus']"),
                            ('{"n_factors": "six"}', "--source-options {\"n_factors\": \"six\"}: "),
                            ('{"n_factors": 6, "noise_std": NaN}', "the examples contain NaN or Inf (from --source-options")):
        one_line_error(capsys, ["train", *SYN[:src], options, *SYN[src + 1:], "--out", out], needle)
    one_line_error(capsys, _tiny(cifar_root, out, "--source-options", '{"seed": 1}'),
                   "--source-options: cifar-fs takes no source options")
    for flags, needle in ((["--num-workers", "-1"], "--num-workers must be an integer >= 0"),
                          (["--seed", str(2 ** 70)], "--seed must be an integer that fits in 64 bits"),
                          (["--log-every", "-1"], "--log-every must be an integer >= 0"),
                          (["--backbone-options", '{"hidden": "x"}'], "backbone 'mlp': bad options"),
                          (["--backbone-options", '{"depth": 3}'], "backbone 'mlp': bad options"),
                          (["--head-options", '{"bogus": 1}'], "head 'ridge': bad options")):
        one_line_error(capsys, ["train", *SYN, *flags, "--out", out], needle)
    assert not out.exists()


def test_nan_data_and_an_infinite_lr_and_divergence_are_told_apart(tmp_path, capsys):
    src = SYN.index("--source-options") + 1
    nan = SYN_SOURCE[:-1] + ', "noise_std": NaN}'
    one_line_error(capsys, ["train", *SYN[:src], nan, *SYN[src + 1:], "--out", tmp_path / "a"],
                   "synthetic/train: the examples contain NaN or Inf", "--source-options")
    one_line_error(capsys, ["train", *SYN, "--lr", "inf", "--out", tmp_path / "b"],
                   "--lr must be a finite number > 0, got inf")
    line = one_line_error(capsys, ["train", *SYN, "--optimizer", "sgd", "--lr", "1e30", "--out", tmp_path / "c"],
                          "the training diverged with --lr 1e+30", "lower --lr")
    assert "backbone output" not in line
    assert (tmp_path / "c" / "last.pt").exists()    # diverged after step 0: the run directory is a run


def test_features_the_heads_cannot_take_are_named():
    from metasparse.heads import GroupSparseSVMHead, ProtoNetHead, RidgeHead, SVMHead
    labels = torch.arange(3).repeat_interleave(2)[None]
    for head in (GroupSparseSVMHead(), SVMHead(), RidgeHead(), ProtoNetHead()):
        half = torch.randn(1, 6, 4, dtype=torch.float16)
        with pytest.raises(ValueError, match=r"float32 or float64 features, got torch.float16"):
            head(half[:, :3], half, labels, 3)
        with pytest.raises(ValueError, match=r"n_support = 0"):
            head(torch.randn(1, 3, 4), torch.randn(1, 0, 4), labels[:, :0], 3)
        with pytest.raises(ValueError, match=r"d = 0"):
            head(torch.randn(1, 3, 0), torch.randn(1, 6, 0), labels, 3)


# ------------------------------------------------------------------ checkpoints and configs
def test_checkpoints_naming_a_callable_or_lacking_keys(tmp_path, capsys, syn_run):
    from metasparse.engine.checkpoint import load_checkpoint, save_checkpoint
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "metasparse-checkpoint", "x": _Runs(marker)}, evil)
    line = one_line_error(capsys, ["evaluate", "--checkpoint", evil, *EVAL],
                          f"{evil}: not a loadable metasparse checkpoint (it references posix.mkdir")
    assert "weights_only" not in line and not marker.exists()
    ck = {k: v for k, v in load_checkpoint(syn_run / "best.pt").items() if k not in ("format", "version", "path")}
    for key, value, needle in (("dataset", None, "the run configuration lacks ['dataset']"),
                               ("backbone_options", "wide", "backbone_options must be a dict"),
                               ("way", None, "--checkpoint: its run configuration has no valid 'way'")):
        cfg = dict(ck["config"])
        if value is None:
            del cfg[key]
        else:
            cfg[key] = value
        bad = tmp_path / f"bad_{key}.pt"
        save_checkpoint(bad, {**ck, "config": cfg})
        one_line_error(capsys, ["evaluate", "--checkpoint", bad, *EVAL, "--out", tmp_path / "e.json"], needle)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".json") == []


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused_not_scored(tmp_path, capsys, syn_run, value):
    """A NaN / Inf logit scale (or any weight) used to be scored: loss NaN, accuracy of
    argmax over NaN (33.3% at 3-way), looking like a result."""
    from metasparse.engine.checkpoint import load_checkpoint, save_checkpoint
    ck = {k: v for k, v in load_checkpoint(syn_run / "best.pt").items() if k not in ("format", "version", "path")}
    model = dict(ck["model"])
    model["head.scale"] = torch.full_like(model["head.scale"], value)
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, {**ck, "model": model})
    for cmd in (["evaluate", "--checkpoint", bad, *EVAL, "--out", tmp_path / "e.json"],
                ["compare", bad, *EVAL, "--out", tmp_path / "cmp"]):
        one_line_error(capsys, cmd, f"{bad}: 1 weight tensor(s) hold NaN or Inf (head.scale)")
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "cmp").exists()


# ------------------------------------------------------------------ episode files
@pytest.fixture(scope="module")
def episodes_file(syn_run, tmp_path_factory):
    from metasparse.cli import main
    path = tmp_path_factory.mktemp("eps") / "eps.json"
    assert main(["evaluate", "--checkpoint", str(syn_run), *EVAL, "--save-episodes", str(path),
                 "--out", str(path.with_name("e.json"))]) == 0
    return path


def _mutations(doc):
    """(name, edited copy of ``doc``, expected piece of the message) of each hostile episode file."""
    n = doc["n_examples"]

    def edited(fn):
        d = json.loads(json.dumps(doc))
        fn(d)
        return d
    yield "out of range", edited(lambda d: d["support_index"][0].__setitem__(0, n + 5)), "outside 0.."
    yield "negative", edited(lambda d: d["query_index"][1].__setitem__(0, -1)), "query_index has indices outside"
    yield "reversed", edited(lambda d: d["support_index"][0].reverse()), "are not of the classes class_ids lists"
    yield "leakage", edited(lambda d: d["query_index"][0].__setitem__(0, d["support_index"][0][0])), \
        "support and query must be disjoint"
    yield "class twice", edited(lambda d: d["class_ids"][0].__setitem__(1, d["class_ids"][0][0])), \
        "lists a class twice"
    yield "float index", edited(lambda d: d["support_index"][0].__setitem__(0, 1.5)), "array of integers"
    yield "way as text", edited(lambda d: d.__setitem__("way", str(d["way"]))), "'way' must be an integer"
    yield "no episodes", edited(lambda d: d.update(class_ids=[], support_index=[], query_index=[])), "array shapes"


def test_episode_files_are_validated_index_by_index(tmp_path, capsys, syn_run, episodes_file):
    doc = json.loads(episodes_file.read_text())
    for name, bad, needle in _mutations(doc):
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(json.dumps(bad))
        before = snapshot(tmp_path)
        one_line_error(capsys, ["evaluate", "--checkpoint", syn_run, "--episodes-file", path, "--no-progress",
                                "--device", "cpu", "--out", tmp_path / "e.json"], f"{path}: ", needle)
        assert snapshot(tmp_path) == before, name
    # a .pt episode file naming a callable: refused, not run, no torch advice
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "metasparse-episodes/1", "class_ids": _Runs(marker)}, evil)
    line = one_line_error(capsys, ["evaluate", "--checkpoint", syn_run, "--episodes-file", evil, "--no-progress",
                                   "--device", "cpu"], f"{evil}: not a readable episode file")
    assert "weights_only" not in line and not marker.exists()
    # the valid file still evaluates
    assert run_cli(capsys, ["evaluate", "--checkpoint", syn_run, "--episodes-file", episodes_file, "--no-progress",
                            "--device", "cpu", "--out", tmp_path / "ok.json"])[0] == 0


def test_save_episodes_targets_are_checked_before_the_work(tmp_path, capsys, syn_run, episodes_file):
    """--save-episodes: an existing file (without --force), a file in place of a folder, a bad suffix
    or a clash with --episodes-file is refused in one line before anything is evaluated
    or written; --force overwrites."""
    taken = tmp_path / "taken.json"
    taken.write_text("mine")
    cases = ((taken, "already holds a result"), (taken / "where.json", "is a file, not a folder"),
             (tmp_path / "eps.txt", "must end in .json or .pt"))
    for target, needle in cases:
        before = snapshot(tmp_path)
        one_line_error(capsys, ["evaluate", "--checkpoint", syn_run, *EVAL, "--save-episodes", target,
                                "--out", tmp_path / "e.json"], "--save-episodes", needle)
        assert snapshot(tmp_path) == before, target
    assert taken.read_text() == "mine"
    one_line_error(capsys, ["evaluate", "--checkpoint", syn_run, "--episodes-file", episodes_file, "--no-progress",
                            "--device", "cpu", "--save-episodes", tmp_path / "x.json"], "contradicts --episodes-file")
    # two shots: both NAME_{K}shot files are checked, one taken is enough to refuse
    (tmp_path / "pair_1shot.json").write_text("mine")
    one_line_error(capsys, ["evaluate", "--checkpoint", syn_run, "--episodes", "2", "--query", "2", "--shot", "1",
                            "2", "--no-progress", "--device", "cpu", "--save-episodes", tmp_path / "pair.json",
                            "--out", tmp_path / "e.json"], "pair_1shot.json", "already holds")
    assert not (tmp_path / "pair_2shot.json").exists() and not (tmp_path / "e.json").exists()
    assert run_cli(capsys, ["evaluate", "--checkpoint", syn_run, *EVAL, "--save-episodes", taken, "--force",
                            "--out", tmp_path / "e.json"])[0] == 0
    assert json.loads(taken.read_text())["shot"] == 2


def test_a_solver_stopped_short_is_never_silent(tmp_path, capsys):
    """``--head-options '{"max_iter": 0}'`` cannot reach the tolerance: training warns with the
    numbers and logs the gap; ``--strict-solver`` turns it into one line, exit status 1."""
    head = ["--head", "group-sparse-svm", "--head-options", '{"max_iter": 0}']
    syn = [a for a in SYN]
    i = syn.index("--head")
    del syn[i:i + 2]
    with pytest.warns(SolverConvergenceWarning, match="stopped short of the solver tolerance"):
        rc, _, err = run_cli(capsys, ["train", *syn, *head, "--out", tmp_path / "a"])
    assert rc == 0, err
    epochs = [json.loads(ln) for ln in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
              if json.loads(ln).get("kind") == "epoch"]
    assert epochs and epochs[-1]["train_unconverged_fraction"] > 0 and epochs[-1]["train_max_rel_gap"] > 1e-5
    one_line_error(capsys, ["train", *syn, *head, "--strict-solver", "--out", tmp_path / "b"], "tol", rc=1)
    assert (tmp_path / "b" / "last.pt").exists()    # stopped before an update: the run stays resumable


def test_argument_errors_are_one_line(capsys):
    """argparse's own errors (unknown command, bad int, missing required flag): one line
    naming the flag, exit status 2, no usage block."""
    for argv, needle in ((["nothing"], "invalid choice: 'nothing'"),
                         (["evaluate", "--shot", "x"], "argument --shot: invalid int value: 'x'")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert exc.value.code == 2 and len(lines) == 1 and needle in lines[0], err
        assert lines[0].startswith("metasparse") and "usage:" not in err
    # --out is optional for --print-config, so its absence is the command's own one-line error
    one_line_error(capsys, ["train", "--dataset", "synthetic"], "--out is required")


def test_redirected_output_has_no_progress_bar_frames(tmp_path):
    """tqdm's convention: no bar when the output is not a terminal, so a log redirected to
    a file holds the per-epoch lines, not carriage-return frames."""
    args = [a for a in SYN if a != "--no-progress"]
    r = subprocess.run([sys.executable, "-m", "metasparse", "train", *args, "--out", str(tmp_path / "run")],
                       env=subprocess_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\r" not in r.stdout + r.stderr
    assert "epoch 1/1: loss" in r.stdout + r.stderr


def test_out_of_range_seed_and_zero_counts_are_refused(tmp_path, capsys, syn_run):
    """evaluate --seed 2**64 used to give seed 0's episodes (the hash is modulo 2^64);
    demo --epochs 0 used to run the default 10 epochs."""
    one_line_error(capsys, ["evaluate", "--checkpoint", syn_run, *EVAL, "--seed", str(2 ** 64),
                            "--out", tmp_path / "e.json"], "--seed must be an integer that fits in 64 bits")
    for flag in ("--epochs", "--batches-per-epoch", "--episodes"):
        one_line_error(capsys, ["demo", "--out", tmp_path / "demo", flag, "0"], f"{flag} must be an integer >= 1")
    # 10^8 episodes grew the process by ~20 MB/s with no output
    one_line_error(capsys, ["evaluate", "--checkpoint", syn_run, "--episodes", str(10 ** 8), "--no-progress",
                            "--out", tmp_path / "e.json"], "--episodes 100000000: at most 100000 per shot")
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "demo").exists()


def test_a_users_own_episodes_py_in_the_working_directory_does_not_shadow_the_package(tmp_path):
    """`python -m` puts the working directory first on sys.path; a user's episodes.py there
    used to break every command (and the tool blamed itself)."""
    (tmp_path / "episodes.py").write_text('raise RuntimeError("the user\'s own episodes.py")\n')
    r = subprocess.run([sys.executable, "-m", "metasparse", "evaluate", "--checkpoint", str(tmp_path / "none.pt")],
                       cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert "none.pt does not exist" in r.stderr


def test_a_non_utf8_out_path_is_printed_escaped_not_a_crash_after_the_work(tmp_path):
    out = os.path.join(os.fsdecode(bytes(tmp_path)), os.fsdecode(b"run-\xff"))
    r = subprocess.run([sys.executable, "-m", "metasparse", "train", *SYN, "--out", out],
                       env={**subprocess_env(), "PYTHONIOENCODING": "utf-8:strict"}, capture_output=True)
    assert r.returncode == 0, r.stderr[-1500:]
    assert b"UnicodeEncodeError" not in r.stderr and b"\\udcff" in r.stdout + r.stderr
    assert os.path.exists(os.path.join(out, "last.pt"))


def test_user_errors_that_used_to_be_tracebacks(tmp_path, capsys, syn_run):
    """--way 1; --lambda-ratio 1e308 (lambda1 overflowed to inf); data of magnitude 1e20
    (its lambda_max overflows: the first step fails, and the new run is removed);
    compare --feature-cache inf."""
    src = SYN.index("--source-options") + 1
    way = SYN.index("--way") + 1
    one_line_error(capsys, ["train", *SYN[:way], "1", *SYN[way + 1:], "--out", tmp_path / "w1"], "--way must be an integer >= 2")
    one_line_error(capsys, ["evaluate", "--checkpoint", syn_run, *EVAL, "--way", "1", "--out", tmp_path / "e.json"],
                   "--way must be >= 2")
    huge = SYN_SOURCE[:-1] + ', "noise_std": 1e20}'
    one_line_error(capsys, ["train", *SYN[:src], huge, *SYN[src + 1:], "--head", "group-sparse-svm",
                            "--out", tmp_path / "big"], "the first batch's features are too large", "normalise")
    one_line_error(capsys, ["compare", syn_run, *EVAL, "--feature-cache", "inf", "--out", tmp_path / "c"],
                   "--feature-cache 'inf': expected a finite size >= 0")
    assert not any(tmp_path.iterdir())
    rc = run_cli(capsys, ["train", *SYN, "--head", "group-sparse-svm", "--lambda-ratio", "1e308",
                          "--out", tmp_path / "r"])[0]
    assert rc == 0


def test_messages_for_an_empty_split_and_a_folder_as_episode_file(tmp_path, capsys, syn_run, cifar_root):
    import numpy as np
    from fixtures_formats import write_py2_pickle
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    write_py2_pickle(str(root / "CIFAR_FS_train.pickle"), {"data": np.zeros((0, 32, 32, 3), np.uint8), "labels": []})
    one_line_error(capsys, _tiny(root, tmp_path / "run"), "CIFAR_FS_train.pickle", "holds no images (an empty split)")
    folder = tmp_path / "eps"
    folder.mkdir()
    one_line_error(capsys, ["evaluate", "--checkpoint", syn_run, "--episodes-file", folder, "--no-progress",
                            "--device", "cpu", "--out", tmp_path / "e.json"],
                   f"{folder}: is a folder, not an episode file")


def test_prepare_refuses_duplicate_and_oversized_archive_members(tmp_path, capsys):
    """Two members named train used to be read silently (the last one won); a member
    declaring 3 GiB was read into memory (4.1 GB peak) before anything was checked."""
    good = _archive(tmp_path / "good.tar.gz")
    dup = tmp_path / "dup.tar.gz"
    with tarfile.open(good) as src, tarfile.open(dup, "w:gz") as tar:
        for m in src.getmembers():
            tar.addfile(m, src.extractfile(m) if m.isfile() else None)
        m = src.getmember("cifar-100-python/train")
        m2 = tarfile.TarInfo("extra/train")
        m2.size = m.size
        tar.addfile(m2, src.extractfile(m))
    out = tmp_path / "out"
    one_line_error(capsys, ["prepare", "cifar-fs", "--cifar100", dup, "--out", out], "two members named 'train'")
    big = tmp_path / "big.tar"
    with tarfile.open(big, "w") as tar:
        info = tarfile.TarInfo("cifar-100-python/train")
        tar.addfile(info)
    with open(big, "r+b") as f:    # a header only, declaring 3 GiB: the declared size is what is checked
        block = bytearray(f.read(512))   # (Python >= 3.13's tarfile writes no header without the data)
        block[124:136] = b"%011o\0" % (3 * 2 ** 30)
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block)
        f.seek(0)
        f.write(block)
    one_line_error(capsys, ["prepare", "cifar-fs", "--cifar100", big, "--out", out], "declares 3072 MiB")
    assert not out.exists()


def test_disk_full_names_the_file_and_keeps_the_evaluation(tmp_path, capsys, syn_run, monkeypatch):
    """A write error that names no file (ENOSPC from write/fsync) used to be reported as a bug;
    after a whole evaluation, its results were lost."""
    import errno
    import episodes.atomic as atomic
    real = atomic.os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    out = tmp_path / "e.json"
    rc, _, err = run_cli(capsys, ["evaluate", "--checkpoint", syn_run, *EVAL, "--out", out])
    monkeypatch.setattr(atomic.os, "fsync", real)
    lines = [ln for ln in err.splitlines() if ln.startswith("metasparse evaluate: error:")]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1
    assert f"{out}: No space left on device; the results were printed above instead" in lines[0]
    assert '"accuracy"' in err and not out.exists() and not any(tmp_path.glob(".e.json.*"))
