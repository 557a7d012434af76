"""Building CIFAR-FS / FC100 MetaOptNet pickles from a (small, fake) cifar-100-python.tar.gz."""
import os
import tarfile

import numpy as np
import pytest

import fixtures_formats as ff
from episodes.sources import build_cifar_fs_fc100, load_source
from episodes.sources.cifar import CIFAR_FS_SPLIT, COARSE_LABEL_NAMES, FC100_SPLIT, FINE_LABEL_NAMES
from episodes.sources.safe_pickle import load_pickle


def _expected_images(parts, fine_id):
    """Independent reference: archive rows of one class (train then test) as (n, 32, 32, 3)."""
    rows = []
    for member in ("train", "test"):
        d = parts[member]
        for row, f in zip(d["data"], d["fine_labels"]):
            if f == fine_id:
                img = np.stack([row[k * 1024:(k + 1) * 1024].reshape(32, 32) for k in range(3)], axis=-1)
                rows.append(img)
    return np.stack(rows)


@pytest.mark.parametrize("dataset", ["cifar-fs", "fc100"])
def test_build_and_load(tmp_path, cifar_archive, dataset):
    archive, parts = cifar_archive
    out = tmp_path / "built"
    written = build_cifar_fs_fc100(archive, out, dataset)
    prefix = {"cifar-fs": "CIFAR_FS", "fc100": "FC100"}[dataset]
    assert {k: os.path.basename(v) for k, v in written.items()} == {s: f"{prefix}_{s}.pickle" for s in ("train", "val", "test")}
    assert sorted(os.listdir(out)) == sorted(f"{prefix}_{s}.pickle" for s in ("train", "val", "test"))  # no temp files
    seen = set()
    for split in ("train", "val", "test"):
        raw = load_pickle(written[split])
        assert sorted(raw) == ["data", "labels"] and raw["data"].dtype == np.uint8 and raw["data"].shape[1:] == (32, 32, 3)
        assert isinstance(raw["labels"], list) and all(isinstance(v, int) for v in raw["labels"])
        src = load_source(dataset, out, split)
        classes = set(src.classes.tolist())
        assert not classes & seen
        seen |= classes
        if dataset == "cifar-fs":
            names = {FINE_LABEL_NAMES[c] for c in classes}
            if split == "train":
                assert len(names) == 64 and not names & (set(CIFAR_FS_SPLIT["val"]) | set(CIFAR_FS_SPLIT["test"]))
            else:
                assert names == set(CIFAR_FS_SPLIT[split])
        else:
            coarse = {ff._COARSE_OF_FINE[c] for c in classes}
            assert coarse == set(FC100_SPLIT[split]) and len(classes) == 5 * len(FC100_SPLIT[split])
        for c in list(classes)[:3]:
            got = src.data[src.indices_by_class[c]].permute(0, 2, 3, 1).numpy()
            assert np.array_equal(got, _expected_images(parts, c))       # 5 train + 1 test images, R/G/B planes
    assert seen == set(range(100))


def test_fc100_superclass_names():
    assert [COARSE_LABEL_NAMES[i] for i in FC100_SPLIT["test"]] == ["aquatic_mammals", "insects", "medium_mammals", "people"]


def test_build_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python.tar.gz"):
        build_cifar_fs_fc100(tmp_path / "cifar-100-python.tar.gz", tmp_path, "cifar-fs")
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(__file__, arcname="cifar-100-python/README")
    with pytest.raises(ValueError, match=r"missing member\(s\) \['train', 'test', 'meta'\]"):
        build_cifar_fs_fc100(bad, tmp_path, "fc100")
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'"):
        build_cifar_fs_fc100(bad, tmp_path, "cifar10")
    not_tar = tmp_path / "not-a-tar.tar.gz"
    not_tar.write_bytes(b"\x80\x02}q\x00.")                      # e.g. a pickle passed by mistake
    with pytest.raises(ValueError) as err:
        build_cifar_fs_fc100(not_tar, tmp_path, "cifar-fs")
    msg = str(err.value)
    assert "not-a-tar.tar.gz: not a readable tar archive" in msg and "\n" not in msg   # one-line error
