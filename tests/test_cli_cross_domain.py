"""Cross-domain evaluation: a model trained on CIFAR-FS (32x32) evaluated and compared on CUB
episodes (84x84), through the command line: every output says "cross-domain: trained on X,
evaluated on Y", the images reach the model resized to its input shape and normalised with
the training dataset's statistics; a channel mismatch and a missing --data-root are one line."""
import io
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_formats import write_metaoptnet_cifar  # noqa: E402
from fixtures_omniglot_cub import cub_tree, write_cub  # noqa: E402
from metasparse.api.cross_domain import adapt_source, evaluation_source  # noqa: E402
from metasparse.cli import main  # noqa: E402
from metasparse.errors import DataError  # noqa: E402
from episodes.sources import load_source  # noqa: E402
from episodes.sources.cifar import CIFAR_MEAN, CIFAR_STD  # noqa: E402

LABEL = "cross-domain: trained on cifar-fs, evaluated on cub"
EVAL = ["--shot", "1", "--way", "3", "--query", "2", "--episodes", "4", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    cifar = tmp_path_factory.mktemp("cifarfs")
    write_metaoptnet_cifar(str(cifar), "cifar-fs", per_class=6, n_classes={"train": 4, "val": 3, "test": 3})
    cub = tmp_path_factory.mktemp("cub")
    write_cub(str(cub), cub_tree(16, per_class=(3, 4)))
    return cifar, cub


@pytest.fixture(scope="module")
def checkpoint(roots, tmp_path_factory):
    cifar, _ = roots
    out = tmp_path_factory.mktemp("run") / "cifar"
    assert main(["train", "--dataset", "cifar-fs", "--data-root", str(cifar), "--backbone", "conv4",
                 "--backbone-options", '{"hidden": 4, "out_channels": 4}', "--head", "protonet", "--way", "3",
                 "--train-shot", "1", "--query", "2", "--episodes-per-batch", "2", "--epochs", "1",
                 "--batches-per-epoch", "2", "--val-episodes", "0", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    return out / "best.pt"


def test_evaluate_on_another_dataset_says_so(roots, checkpoint, capsys):
    _, cub = roots
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "CUB", "--data-root", str(cub), *EVAL]) == 0
    out = capsys.readouterr().out
    assert f"{LABEL} (images resized from 3x84x84 to 3x32x32, normalised with cifar-fs's statistics)" in out
    assert f"| cub test | {LABEL}" in out
    files = sorted(checkpoint.parent.glob("eval_cross-cub_best_*.json"))
    assert len(files) == 1, files
    payload = json.loads(files[0].read_text())
    assert payload["cross_domain"] == LABEL
    assert (payload["dataset"], payload["trained_dataset"]) == ("cub", "cifar-fs")
    assert (payload["data_shape"], payload["example_shape"]) == ([3, 84, 84], [3, 32, 32])
    assert payload["results"]["1"]["episodes"] == 4
    # in-domain (the checkpoint's own dataset named, or no --dataset): no cross-domain label
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "cifar_fs", *EVAL]) == 0
    out = capsys.readouterr().out
    assert "cross-domain" not in out and "| cifar-fs test" in out
    in_domain = [f for f in checkpoint.parent.glob("eval_*.json") if "cross" not in f.name]
    assert len(in_domain) == 1 and "cross_domain" not in json.loads(in_domain[0].read_text())


def test_compare_on_another_dataset_says_so_in_every_report(roots, checkpoint, tmp_path, capsys):
    _, cub = roots
    out = tmp_path / "cmp"
    assert main(["compare", str(checkpoint), "--heads", "svm", "group-sparse-svm", "--lambda-ratios", "0.01", "0.1",
                 "--dataset", "cub", "--data-root", str(cub), "--out", str(out), *EVAL]) == 0
    printed = capsys.readouterr().out
    assert LABEL in printed
    for name in ("compare.md", "tradeoff.md"):
        lines = (out / name).read_text().splitlines()
        assert lines[0].startswith("# ") and lines[2].startswith(f"**{LABEL} (images resized from 3x84x84"), name
    for name in ("compare.json", "tradeoff.json"):
        payload = json.loads((out / name).read_text())
        assert (payload["cross_domain"], payload["dataset"], payload["trained_dataset"]) == (LABEL, "cub", "cifar-fs")


def test_the_model_sees_resized_images_normalised_as_in_training(roots, checkpoint):
    """The adapted split: each image is the bilinear antialiased resize of the CUB image (PIL's,
    an independent implementation, within one grey level), normalised with CIFAR's constants."""
    from PIL import Image
    from episodes import sample_fixed_episodes
    _, cub = roots
    ck = {"path": str(checkpoint), "config": torch.load(checkpoint, weights_only=True)["config"]}
    source, cross = evaluation_source(ck, "cub", cub, "test")
    raw = load_source("cub", cub, "test")
    assert cross.label == LABEL and source.example_shape == (3, 32, 32) and torch.equal(source.labels, raw.labels)
    assert (source.mean, source.std) == (CIFAR_MEAN, CIFAR_STD) and raw.mean != CIFAR_MEAN
    ref = np.stack([np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).resize((32, 32), Image.BILINEAR))
                    for img in raw.data]).transpose(0, 3, 1, 2)
    assert np.abs(source.data.numpy().astype(int) - ref).max() <= 1
    batch = next(sample_fixed_episodes(source, 3, 1, 2, 1, seed=0).batches(source, 1, transform="eval"))
    x = source.data[batch.support_index[0]].float() / 255
    expected = (x - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1)
    assert torch.allclose(batch.support[0], expected, atol=1e-5)
    # the statistics come from the run configuration when it records them (a registered dataset
    # has no entry in episodes' table), else from the dataset's
    assert ck["config"]["normalisation"] == {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    recorded = {**ck, "config": {**ck["config"], "normalisation": {"mean": [0.5] * 3, "std": [0.25] * 3}}}
    assert evaluation_source(recorded, "cub", cub, "test")[0].mean == (0.5, 0.5, 0.5)
    legacy = {**ck, "config": {k: v for k, v in ck["config"].items() if k != "normalisation"}}
    assert evaluation_source(legacy, "cub", cub, "test")[0].mean == CIFAR_MEAN


def test_a_split_read_from_disk_is_resized_as_it_is_read(roots):
    """A source whose images are read per episode (``LazyImageSource``) is resized image by
    image, to the same pixels as the in-memory split."""
    from episodes.sources.base import LazyImageSource
    _, cub = roots
    raw = load_source("cub", cub, "val")

    class Store:                     # the store protocol of LazyImageSource
        shape, dtype = tuple(raw.data.shape), torch.uint8

        def __len__(self):
            return self.shape[0]

        def __getitem__(self, i):
            return raw.data[i].clone()

        def read_into(self, index, out):
            out[...] = raw.data[torch.from_numpy(index)].numpy()

    lazy = LazyImageSource(Store(), raw.labels, split="val", name="cub", mean=raw.mean, std=raw.std)
    eager = adapt_source(raw, (3, 32, 32), CIFAR_MEAN, CIFAR_STD)
    adapted = adapt_source(lazy, (3, 32, 32), CIFAR_MEAN, CIFAR_STD)
    assert adapted.example_shape == (3, 32, 32) and not adapted.in_memory
    index = torch.tensor([5, 0, 3, 3])
    assert torch.equal(adapted.gather(index), eager.data[index])
    assert torch.equal(adapted.data[2], eager.data[2])
    assert lazy.example_shape == (3, 84, 84)                 # the original is left as it was


def test_cross_domain_errors_are_one_line(roots, checkpoint, capsys):
    _, cub = roots

    def err(argv):
        assert main(argv) == 2
        e = capsys.readouterr().err.strip()
        assert len(e.splitlines()) == 1, e
        return e

    assert "--data-root is required for --dataset cub" in err(
        ["evaluate", "--checkpoint", str(checkpoint), "--dataset", "cub", *EVAL])
    assert "--dataset 'imagenet-21k': expected one of" in err(
        ["evaluate", "--checkpoint", str(checkpoint), "--dataset", "imagenet-21k", "--data-root", str(cub), *EVAL])
    assert "no CUB-200-2011 under" in err(
        ["compare", str(checkpoint), "--dataset", "cub", "--data-root", str(checkpoint.parent), *EVAL])
    grey = {"path": "omni.pt", "config": {"dataset": "omniglot", "example_shape": [1, 28, 28], "data_root": "x"}}
    with pytest.raises(DataError, match=r"^--dataset cub: its images have 3 channel\(s\), omni.pt was trained on "
                                        r"omniglot images with 1; cross-domain evaluation needs the same number"):
        evaluation_source(grey, "cub", cub, "test")
    vectors = {"path": "syn.pt", "config": {"dataset": "synthetic", "example_shape": [6], "data_root": None}}
    with pytest.raises(DataError, match=r"syn.pt was trained on synthetic vectors of shape \(6,\); cross-domain"):
        evaluation_source(vectors, "cub", cub, "test")


def test_docs_list_the_new_flag():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    evaluate = doc.split("\n## `metasparse evaluate`")[1].split("\n## ")[0]
    compare = doc.split("\n## `metasparse compare`")[1].split("\n## ")[0]
    assert "[--dataset D]" in evaluate.split("```")[1] and "### Cross-domain evaluation (`--dataset`)" in evaluate
    assert "[--dataset D --data-root PATH]" in compare.split("```")[1]
    assert LABEL in evaluate


def test_omniglot_trains_and_refuses_rgb_episodes(roots, tmp_path, capsys):
    """A 1-channel Conv-4 meta-trained on Omniglot (no augmentation, 28x28 grey); evaluating it
    on CUB's RGB images is one line (exit 2), on its own test split it works."""
    from fixtures_omniglot_cub import write_omniglot
    _, cub = roots
    omni = tmp_path / "omni"
    write_omniglot(str(omni), per_character=2)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "omniglot", "--data-root", str(omni), "--way", "5", "--train-shot", "1",
                 "--query", "1", "--val-episodes", "0", "--epochs", "1", "--batches-per-epoch", "2",
                 "--backbone-options", '{"hidden": 8, "out_channels": 8}', "--out", str(run), "--no-progress",
                 "--device", "cpu"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["backbone"], cfg["example_shape"], cfg["n_features"]) == ("conv4", [1, 28, 28], 8)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--dataset", "cub", "--data-root", str(cub),
                 *EVAL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "its images have 3 channel(s)" in err and "omniglot images with 1" in err
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--way", "20", "--shot", "1", "--query", "1",
                 "--episodes", "2", "--no-progress", "--device", "cpu"]) == 0
    assert "20-way 1-shot" in capsys.readouterr().out
