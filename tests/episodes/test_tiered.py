"""tieredImageNet: MetaOptNet's ``{split}_images.npz`` and learn2learn's / Ren et al.'s
``{split}_images_png.pkl`` (each with ``{split}_labels.pkl``), written here in their real
formats, read lazily (image by image from disk) into the same episodes as an in-memory
source of the same images; detection by file name, one-line errors, the registry, the
protocol and a small ``metasparse train`` / ``evaluate`` through the command line."""
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from episodes.fixed import sample_fixed_episodes
from episodes.sampler import EpisodeSampler, episode_loader
from episodes.sources import load_source, normalise_dataset
from episodes.sources.base import FewShotSource, LazyImageSource
from episodes.sources.safe_pickle import UnsafePickleError
from episodes.sources.tiered import SPLIT_CLASS_OFFSET, NpzImages, PngPickleImages
from fixtures_formats import py2_pickle_dumps

ROOT = Path(__file__).resolve().parents[2]


# -- writers of the real formats ---------------------------------------------------------------
def _images(n, seed, size=84):
    """Random pixels plus a smooth ramp (so that PNG compresses a little, as on real images)."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(size), np.arange(size)).astype(np.uint8)[None, :, :, None]
    return (rng.integers(0, 64, (n, size, size, 3), dtype=np.uint8) + ramp).astype(np.uint8)


def _labels(n_classes, per_class, seed):
    labels = np.repeat(np.arange(n_classes), per_class)
    np.random.default_rng(seed).shuffle(labels)
    return labels


def cv2_png(bgr: np.ndarray) -> np.ndarray:
    """What ``cv2.imencode('.png', img)[1]`` returns for an OpenCV (B, G, R) image: the PNG file
    (which stores R, G, B) as a uint8 (L, 1) array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[..., ::-1])).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(-1, 1)


def write_npz_split(root, split, images, labels, labels_key="labels", py2=False):
    """MetaOptNet: np.savez(images=uint8 (N, 84, 84, 3)) + a pickled dict of labels."""
    os.makedirs(root, exist_ok=True)
    np.savez(os.path.join(root, f"{split}_images.npz"), images=images)
    d = {labels_key: [int(v) for v in labels]}
    data = py2_pickle_dumps(d) if py2 else pickle.dumps(d, protocol=4)
    Path(root, f"{split}_labels.pkl").write_bytes(data)


def write_png_split(root, split, images, specific, protocol="py2", names=None):
    """Ren et al. / learn2learn: a pickled list of cv2.imencode PNG arrays (Python 2 cPickle,
    protocol 2, as Ren et al.'s files; or a Python 3 protocol) + their labels dict."""
    os.makedirs(root, exist_ok=True)
    pngs = [cv2_png(x) for x in images]
    if protocol == "bytes":                       # a re-save as a list of byte strings
        data = pickle.dumps([p.tobytes() for p in pngs], protocol=4)
    elif protocol == "py2":
        data = py2_pickle_dumps(pngs)
    else:
        data = pickle.dumps(pngs, protocol=protocol)
    Path(root, f"{split}_images_png.pkl").write_bytes(data)
    n_classes = int(np.max(specific)) + 1
    d = {"label_specific": np.asarray(specific, dtype=np.int32),
         "label_general": np.asarray(specific, dtype=np.int32) // 2,
         "label_specific_str": names or [f"synset {c}" for c in range(n_classes)],
         "label_general_str": [f"category {c}" for c in range((n_classes + 1) // 2)]}
    Path(root, f"{split}_labels.pkl").write_bytes(py2_pickle_dumps(d))
    return pngs


def in_memory(images, labels, split="train"):
    from episodes.sources.tiered import TIERED_MEAN, TIERED_STD
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return FewShotSource(data, labels, split=split, name="tiered-imagenet", mean=TIERED_MEAN, std=TIERED_STD)


@pytest.fixture(scope="module")
def split_data():
    images = _images(48, seed=0)
    return images, _labels(6, 8, seed=1)


# -- the formats ----------------------------------------------------------------------------------
def test_npz_is_read_from_disk_not_loaded(tmp_path, split_data):
    images, labels = split_data
    write_npz_split(tmp_path, "train", images, labels)
    tracemalloc.start()
    source = load_source("tieredImageNet", tmp_path, "train")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(source, LazyImageSource) and not source.in_memory
    assert isinstance(source.data, NpzImages) and not isinstance(source.data, torch.Tensor)
    assert peak < images.nbytes / 10, peak              # the 1 MB image array was not read
    assert source.data.shape == (48, 3, 84, 84) and source.example_shape == (3, 84, 84) and len(source) == 48
    assert source.labels.tolist() == labels.tolist() and source.classes.tolist() == list(range(6))
    want = torch.from_numpy(images).permute(0, 3, 1, 2)
    idx = torch.tensor([5, 0, 47, 5, 12])
    assert torch.equal(source.gather(idx), want[idx])
    assert torch.equal(source[3][0], want[3]) and source[3][1] == labels[3] and torch.equal(source.data[-1], want[-1])
    # the pixels come from the file when gathered: rewrite image 7 in place, read it back
    path = tmp_path / "train_images.npz"
    with open(path, "r+b") as f:
        f.seek(source.data.offset + 7 * 84 * 84 * 3)
        f.write(bytes([9]) * (84 * 84 * 3))
    assert bool((source.gather(torch.tensor([7])) == 9).all())
    with pytest.raises(IndexError, match="image index 48 outside 0..47"):
        source.gather(torch.tensor([48]))


@pytest.mark.parametrize("protocol", ["py2", 2, 4, 5, "bytes"])
def test_png_pickle_decodes_to_the_npz_pixels(tmp_path, split_data, protocol):
    images, labels = split_data
    write_png_split(tmp_path, "val", images, labels, protocol=protocol)
    tracemalloc.start()
    source = load_source("tiered_imagenet", tmp_path, "validation")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(source.data, PngPickleImages) and source.split == "val"
    assert peak < os.path.getsize(tmp_path / "val_images_png.pkl") / 5, peak    # PNG bytes skipped, not held
    # Ren et al.'s per-split label_specific, shifted past the train classes; names from label_specific_str
    assert source.labels.tolist() == (labels + SPLIT_CLASS_OFFSET["val"]).tolist()
    assert source.class_names == {351 + c: f"synset {c}" for c in range(6)}
    # decoded in OpenCV's plane order, as the npz holds them: the exact pixels of the npz
    assert torch.equal(source.gather(torch.arange(48)), torch.from_numpy(images).permute(0, 3, 1, 2))


def test_png_pickle_store_keeps_offsets_only(tmp_path, split_data):
    images, labels = split_data
    pngs = write_png_split(tmp_path, "test", images[:6], labels[:6] % 2, protocol="py2")
    store = load_source("tiered-imagenet", tmp_path, "test").data
    raw = (tmp_path / "test_images_png.pkl").read_bytes()
    for i, p in enumerate(pngs):           # offsets and lengths point at each PNG's bytes in the file
        assert raw[store.offsets[i]:store.offsets[i] + store.lengths[i]] == p.tobytes()
    assert sum(a.nbytes for a in (store.offsets, store.lengths, store.text)) == 6 * 17
    copy = pickle.loads(pickle.dumps(store))           # DataLoader workers (spawn) get a working copy
    assert torch.equal(copy[2], torch.from_numpy(images[2]).permute(2, 0, 1))


# -- same episodes as in memory ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def both_formats(tmp_path_factory, split_data):
    images, labels = split_data
    npz, png = tmp_path_factory.mktemp("npz"), tmp_path_factory.mktemp("png")
    write_npz_split(npz, "train", images, labels)
    write_png_split(png, "train", images, labels)
    return {"npz": load_source("tiered-imagenet", npz, "train"),
            "png": load_source("tiered-imagenet", png, "train"),
            "memory": in_memory(images, labels)}


def _equal_batches(a, b):
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in
               ("support", "query", "support_labels", "query_labels", "class_ids", "support_index", "query_index"))


@pytest.mark.parametrize("fmt", ["npz", "png"])
@pytest.mark.parametrize("transform", ["train", "eval", None])
def test_lazy_sources_give_the_in_memory_episodes(both_formats, fmt, transform):
    lazy, mem = both_formats[fmt], both_formats["memory"]
    ls, ms = (EpisodeSampler(s, 5, 3, 2, episodes_per_batch=3, seed=11, transform=transform) for s in (lazy, mem))
    for epoch, i in ((0, 0), (0, 5), (3, 2)):
        assert _equal_batches(ls.sample(epoch, i), ms.sample(epoch, i))
    if transform is not None:
        d_lazy, d_mem = ls.sample_deferred(1, 4), ms.sample_deferred(1, 4)
        assert torch.equal(d_lazy.images, d_mem.images)
        assert torch.allclose(d_lazy.finish(ls.transform).support, ms.sample(1, 4).support, atol=1e-5)
    fixed_l = sample_fixed_episodes(lazy, 4, 2, 3, 5, seed=3)
    fixed_m = sample_fixed_episodes(mem, 4, 2, 3, 5, seed=3)
    for a, b in zip(fixed_l.batches(lazy, 2, transform="eval"), fixed_m.batches(mem, 2, transform="eval")):
        assert _equal_batches(a, b)


@pytest.mark.parametrize("fmt", ["npz", "png"])
def test_dataloader_workers_read_their_own_images(both_formats, fmt):
    """Workers (forked) open the file themselves and give the batches of the main process."""
    lazy, mem = both_formats[fmt], both_formats["memory"]
    got = list(episode_loader(lazy, 5, 2, 2, 2, n_batches=4, seed=5, transform="train", num_workers=2))
    want = list(episode_loader(mem, 5, 2, 2, 2, n_batches=4, seed=5, transform="train", num_workers=0))
    assert len(got) == 4 and all(_equal_batches(a, b) for a, b in zip(got, want))


def test_lazy_source_stays_on_the_cpu(both_formats):
    src = both_formats["npz"]
    assert src.to("cpu") is src
    with pytest.raises(ValueError, match=r"tiered-imagenet/train: the images are read from disk per episode .*"
                                         r"cannot be moved to meta"):
        src.to("meta")


# -- detection -------------------------------------------------------------------------------------
def test_detection_by_file_name(tmp_path, split_data):
    images, labels = split_data
    root = tmp_path / "data"
    write_png_split(root / "tiered-imagenet", "train", images, labels)       # learn2learn's folder
    assert isinstance(load_source("tieredImageNet", root, "train").data, PngPickleImages)
    flipped = np.ascontiguousarray(images[:, ::-1])
    write_npz_split(root / "tiered-imagenet", "train", flipped, labels)        # beside it: the npz wins
    src = load_source("tieredImageNet", root, "train")
    assert isinstance(src.data, NpzImages) and torch.equal(src.data[0], torch.from_numpy(flipped[0]).permute(2, 0, 1))
    assert src.path == str(root / "tiered-imagenet" / "train_images.npz")
    # each split on its own: a val split in the other format next to the train one
    write_png_split(root / "tiered-imagenet", "val", images[:12], labels[:12] % 3)
    assert isinstance(load_source("tiered-imagenet", root, "val").data, PngPickleImages)
    for name in ("tiered-imagenet", "tieredImageNet", "tiered_imagenet", "TieredImageNet"):
        assert normalise_dataset(name) == "tiered-imagenet"
    with pytest.raises(FileNotFoundError, match=r"^tiered-imagenet: no test split under '.*data'; expected "
                                                r"test_images.npz \(MetaOptNet\) or test_images_png.pkl "
                                                r"\(learn2learn\), each with test_labels.pkl$"):
        load_source("tiered-imagenet", root, "test")
    (root / "tiered-imagenet" / "val_labels.pkl").unlink()
    with pytest.raises(FileNotFoundError, match=r"val_images_png.pkl: no val_labels.pkl beside it"):
        load_source("tiered-imagenet", root, "val")


# -- bad files: one line naming the file ---------------------------------------------------------
def _npz_member(path, key, arr, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        with zf.open(f"{key}.npy", "w") as f:
            np.lib.format.write_array(f, arr)


def _bad_npz(kind, root, images, labels):
    write_npz_split(root, "train", images, labels)
    path = root / "train_images.npz"
    if kind == "compressed":
        np.savez_compressed(path, images=images)
        return path, r"'images' is compressed \(np.savez_compressed\).*re-save it once uncompressed: np.savez"
    if kind == "no images":
        np.savez(path, data=images)
        return path, r"no array 'images' \(holds \['data'\]\)"
    if kind == "float":
        np.savez(path, images=images.astype(np.float32))
        return path, r"'images' must be a uint8 array of shape \(N, H, W, 3\); got float32"
    if kind == "grey":
        np.savez(path, images=images[..., 0])
        return path, r"'images' must be a uint8 array of shape \(N, H, W, 3\); got uint8 \(48, 84, 84\)"
    if kind == "not a zip":
        path.write_bytes(b"not a zip file at all" * 10)
        return path, "not a readable .npz \\(zip\\) file"
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "not a readable .npz \\(zip\\) file"
    if kind == "bad npy":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("images.npy", b"\x93NUMPY garbage header")
        return path, "'images.npy' is not a readable .npy array"
    if kind == "fortran":
        _npz_member(path, "images", np.asfortranarray(images))
        return path, "Fortran order"
    if kind == "labels count":
        Path(root, "train_labels.pkl").write_bytes(pickle.dumps({"labels": [0] * 47}))
        return root / "train_labels.pkl", r"47 labels in 'labels' for the 48 images of .*train_images.npz"
    if kind == "labels keys":
        Path(root, "train_labels.pkl").write_bytes(pickle.dumps({"classes": [0] * 48}))
        return root / "train_labels.pkl", r"missing key\(s\) \['label_specific'\]"
    if kind == "labels not int":
        Path(root, "train_labels.pkl").write_bytes(pickle.dumps({"labels": ["a"] * 48}))
        return root / "train_labels.pkl", r"'labels' must be 48 integer labels"
    raise AssertionError(kind)


def _bad_png(kind, root, images, labels):
    write_png_split(root, "train", images, labels)
    path = root / "train_images_png.pkl"
    pngs = [cv2_png(x) for x in images[:4]]
    if kind == "dict":
        path.write_bytes(pickle.dumps({"images": pngs}))
        return path, "expected a pickled list of PNG-encoded images \\(numpy uint8 arrays or bytes\\), got a dict"
    if kind == "not png":
        path.write_bytes(pickle.dumps([pngs[0], np.frombuffer(b"\xff\xd8\xff\xe0 a JPEG?" * 20, np.uint8)]))
        return path, "image 1 is not a PNG"
    if kind == "too short":
        path.write_bytes(pickle.dumps([pngs[0], b"short"]))
        return path, "image 1 is 5 bytes long, too short for a PNG"
    if kind == "int array":
        path.write_bytes(pickle.dumps([pngs[0], pngs[1].astype(np.int32)]))
        return path, "image 1 is an array of int32"
    if kind == "sizes":
        small = cv2_png(images[0][:40, :40])
        path.write_bytes(pickle.dumps([pngs[0], pngs[1], small]))
        return path, "image 2 is 40x40, image 0 84x84"
    if kind == "truncated":
        data = py2_pickle_dumps(pngs)
        path.write_bytes(data[: len(data) - 3000])
        return path, r"not a readable pickle of PNG images \(truncated\)"
    if kind == "not a pickle":
        path.write_bytes(b"\x00\x01garbage" * 100)
        return path, "not a readable pickle of PNG images"
    if kind == "empty":
        path.write_bytes(pickle.dumps([]))
        return path, "holds no images"
    if kind == "huge":   # a PNG header declaring 60000x60000: refused before any batch allocates it
        import struct
        import zlib
        huge = bytearray(pngs[0].tobytes())
        huge[16:24] = struct.pack(">II", 60000, 60000)
        huge[29:33] = struct.pack(">I", zlib.crc32(bytes(huge[12:29])))
        path.write_bytes(pickle.dumps([np.frombuffer(bytes(huge), np.uint8)] * 3))
        return path, "declare 60000x60000 pixels; tieredImageNet images are 84x84"
    if kind == "unsafe":
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned",))
        path.write_bytes(pickle.dumps([pngs[0], Evil()]))
        return path, r"refusing to load global '(posix|os|nt)\.system'"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["compressed", "no images", "float", "grey", "not a zip", "truncated", "bad npy",
                                  "fortran", "labels count", "labels keys", "labels not int"])
def test_bad_npz_split_is_a_one_line_error_naming_the_file(tmp_path, split_data, kind):
    path, pattern = _bad_npz(kind, tmp_path, *split_data)
    with pytest.raises(ValueError) as e:
        load_source("tiered-imagenet", tmp_path, "train")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and re.search(pattern, msg), msg


@pytest.mark.parametrize("kind", ["dict", "not png", "too short", "int array", "sizes", "truncated", "not a pickle",
                                  "empty", "huge", "unsafe"])
def test_bad_png_pickle_is_a_one_line_error_naming_the_file(tmp_path, split_data, kind):
    path, pattern = _bad_png(kind, tmp_path, *split_data)
    with pytest.raises((ValueError, UnsafePickleError)) as e:
        load_source("tiered-imagenet", tmp_path, "train")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and re.search(pattern, msg), msg
    assert not (tmp_path / "pwned").exists()


def test_corrupt_png_body_is_reported_when_gathered(tmp_path, split_data):
    images, labels = split_data
    pngs = [cv2_png(x) for x in images[:8]]
    broken = pngs[3].copy()
    broken[60:200] = 0                                    # header intact, compressed data broken
    pngs[3] = broken
    Path(tmp_path, "train_images_png.pkl").write_bytes(py2_pickle_dumps(pngs))
    Path(tmp_path, "train_labels.pkl").write_bytes(py2_pickle_dumps({"label_specific": [0, 1] * 4}))
    source = load_source("tiered-imagenet", tmp_path, "train")
    assert torch.equal(source.gather(torch.tensor([2])), torch.from_numpy(images[2:3]).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"train_images_png.pkl: image 3: not a readable PNG image"):
        source.gather(torch.tensor([1, 3]))


# -- registry, protocol, published numbers -------------------------------------------------------
def test_registry_and_metaoptnet_protocol():
    from metasparse import registry
    for name in ("tieredImageNet", "tiered-imagenet", "TIERED_IMAGENET"):
        assert registry.dataset_name(name) == "tiered-imagenet"
    d = registry.dataset_defaults("tieredImageNet")
    # MetaOptNet's README: --train-shot 10 and no --eps for tieredImageNet; train.py: DropBlock 5 at 84x84
    assert (d["train_shot"], d["label_smoothing"], d["backbone"]) == (10, 0.0, "resnet12")
    assert d["backbone_options"] == {"dropblock_size": 5, "drop_rate": 0.1, "avg_pool": False}
    assert (d["way"], d["query"], d["episodes_per_batch"], d["epochs"], d["batches_per_epoch"]) == (5, 6, 8, 60, 1000)
    entry = registry.dataset_entry("tiered-imagenet")
    assert not entry.generated and not entry.from_cifar100


def test_shipped_config_is_the_builtin_protocol(capsys):
    from metasparse.cli import main

    def printed(argv):
        capsys.readouterr()
        assert main(argv + ["--print-config"]) == 0
        return json.loads(capsys.readouterr().out)
    assert printed(["train", "--config", str(ROOT / "configs" / "tiered-imagenet.yaml"), "--device", "cpu"]) \
        == printed(["train", "--dataset", "tieredImageNet", "--device", "cpu", "--seed", "0"])


def test_published_numbers_in_the_docs():
    """MetaOptNet (Lee et al. 2019), ResNet-12, tieredImageNet: Table 1 (RR, SVM) and Table 3 (ProtoNet)."""
    lines = (ROOT / "docs" / "reference_numbers.md").read_text().splitlines()
    header = next(ln for ln in lines if ln.startswith("| head"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    rows = {ln.strip("|").split("|")[0].strip(): [c.strip() for c in ln.strip("|").split("|")]
            for ln in lines[lines.index(header) + 2:] if ln.startswith("|")}

    def cell(row, shot):
        label = next(k for k in rows if k.startswith(row))
        return rows[label][cols.index(f"tieredImageNet {shot}-shot")]
    assert (cell("ProtoNet", 1), cell("ProtoNet", 5)) == ("61.74 +- 0.77", "80.00 +- 0.55")
    assert (cell("MetaOptNet-RR", 1), cell("MetaOptNet-RR", 5)) == ("65.36 +- 0.71", "81.34 +- 0.52")
    assert (cell("MetaOptNet-SVM", 1), cell("MetaOptNet-SVM", 5)) == ("65.99 +- 0.72", "81.56 +- 0.53")


# -- end to end through the command line -----------------------------------------------------------
def test_cli_trains_and_evaluates_on_a_tiny_tiered_root(tmp_path, capsys):
    from metasparse.cli import main
    from metasparse.engine.checkpoint import load_checkpoint
    data = tmp_path / "tiered"
    write_npz_split(data, "train", _images(30, seed=2), _labels(5, 6, seed=3), py2=True)
    write_png_split(data, "val", _images(18, seed=4), _labels(3, 6, seed=5))
    write_png_split(data, "test", _images(18, seed=6), _labels(3, 6, seed=7), protocol=4)
    out = tmp_path / "run"
    tiny = ["--backbone-options", '{"widths": [4, 4, 8, 8]}', "--way", "3", "--train-shot", "2", "--query", "2",
            "--episodes-per-batch", "2", "--val-episodes", "4", "--val-shot", "2", "--val-query", "2",
            "--no-progress", "--device", "cpu"]
    assert main(["train", "--dataset", "tieredImageNet", "--data-root", str(data), "--head", "svm", "--epochs", "1",
                 "--batches-per-epoch", "3", "--num-workers", "2", "--out", str(out), *tiny]) == 0
    ck = load_checkpoint(out / "best.pt")
    assert ck["config"]["dataset"] == "tiered-imagenet" and ck["config"]["example_shape"] == [3, 84, 84]
    assert ck["config"]["backbone_options"]["dropblock_size"] == 5
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--shot", "1", "--episodes", "4", "--query", "2",
                 "--out", str(tmp_path / "e.json"), "--no-progress", "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "e.json").read_text())["results"]
    assert 0.0 <= res["1"]["accuracy"] <= 1.0
    # a bad file is the command's one-line error, exit 2
    (data / "train_labels.pkl").write_bytes(pickle.dumps({"labels": [0] * 3}))
    capsys.readouterr()
    assert main(["train", "--dataset", "tiered-imagenet", "--data-root", str(data), "--out", str(tmp_path / "r2"),
                 *tiny]) == 2
    err = capsys.readouterr().err
    assert "train_labels.pkl: 3 labels in 'labels' for the 30 images of" in err and err.count("\n") == 1, err
    assert not (tmp_path / "r2").exists()


def test_memory_benchmark_runs_tiny(tmp_path):
    """scripts/bench_tiered_memory.py at toy size: both formats written as the real files
    (the streamed npz is np.savez's archive), every run draws the same batches."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_tiered_memory.py"), "--n", "120", "--classes",
                        "6", "--batches", "2", "--workers", "0", "--data", str(tmp_path / "d"), "--out", str(out)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["same_batches"] and [x["kind"] for x in res["runs"]] == ["npz", "png", "memory"]
    assert all(x["peak_rss_mib"] >= x["rss_end_mib"] > 0 for x in res["runs"])
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_tiered_memory as bench
    images = np.load(tmp_path / "d" / "npz" / "train_images.npz")["images"]
    assert np.array_equal(images, bench.synthetic_images(0, 120, 0))
    png = load_source("tiered-imagenet", tmp_path / "d" / "png", "train")
    assert torch.equal(png.gather(torch.arange(120)), torch.from_numpy(images).permute(0, 3, 1, 2))
