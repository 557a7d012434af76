"""CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018): re-splits of CIFAR-100.

Formats read (see docs/data.md):

* MetaOptNet pickles ``CIFAR_FS_{train,val,test}.pickle`` / ``FC100_{train,val,test}.pickle``:
  a dict with ``data`` uint8 (N, 32, 32, 3) and ``labels`` (list of int).
* learn2learn image folders (CIFAR-FS only): ``cifarfs/processed/{train,val,test}/<class>/*.png``;
  class ids are the CIFAR-100 fine-label indices of the folder names.
* :func:`build_cifar_fs_fc100` writes MetaOptNet-format pickles from the official
  ``cifar-100-python.tar.gz`` (members ``train``, ``test``, ``meta``: ``data`` uint8 (N, 3072)
  as R, G, B planes of 1024 bytes, ``fine_labels``, ``coarse_labels``; ``fine_label_names``,
  ``coarse_label_names``) with the published class splits.  Class ids = fine-label indices.
"""
from __future__ import annotations

import os
import pickle
import tarfile
import tempfile
import zlib
from typing import Dict, List

from typing import TYPE_CHECKING

import numpy as np

from ..atomic import default_file_mode
from .checks import int_labels, require_keys, str_keys
from .safe_pickle import load_pickle, loads_pickle

if TYPE_CHECKING:   # the readers import torch when they run: building the pickles needs only numpy
    from .base import FewShotSource

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "FINE_LABEL_NAMES", "COARSE_LABEL_NAMES", "CIFAR_FS_SPLIT",
           "FC100_SPLIT", "load_metaoptnet_cifar", "load_l2l_cifarfs_folder", "build_cifar_fs_fc100",
           "split_fine_labels"]

CIFAR_MEAN = tuple(v / 255.0 for v in (129.37731888, 124.10583864, 112.47758569))
CIFAR_STD = tuple(v / 255.0 for v in (68.20947949, 65.43124043, 70.45866994))

# CIFAR-100 label names in label-index order (as in the archive's ``meta``).
FINE_LABEL_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
    "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy "
    "porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television "
    "tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
COARSE_LABEL_NAMES = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things "
    "large_natural_outdoor_scenes large_omnivores_and_herbivores medium_mammals "
    "non-insect_invertebrates people reptiles small_mammals trees vehicles_1 vehicles_2").split()
assert len(FINE_LABEL_NAMES) == 100 and len(COARSE_LABEL_NAMES) == 20

# Bertinetto et al. split by fine-label name (train = the other 64 classes).
CIFAR_FS_SPLIT = {
    "val": ("otter motorcycle television lamp crocodile shark butterfly beaver beetle tractor "
            "flatfish maple_tree camel crab sea cattle").split(),
    "test": ("baby bed bicycle chimpanzee fox leopard man pickup_truck plain poppy rocket rose "
             "snail sweet_pepper table telephone wardrobe whale woman worm").split(),
}
# Oreshkin et al. split by coarse-label (superclass) index.
FC100_SPLIT = {
    "train": (1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19),
    "val": (8, 11, 13, 16),
    "test": (0, 7, 12, 14),
}
SPLITS = ("train", "val", "test")
METAOPTNET_PREFIX = {"cifar-fs": "CIFAR_FS", "fc100": "FC100"}


def metaoptnet_file(dataset: str, split: str) -> str:
    return f"{METAOPTNET_PREFIX[dataset]}_{split}.pickle"


def load_metaoptnet_cifar(path: str, dataset: str, split: str) -> FewShotSource:
    """Read one MetaOptNet ``CIFAR_FS_*.pickle`` / ``FC100_*.pickle`` file."""
    from .base import FewShotSource, images_nhwc_to_chw
    d = str_keys(load_pickle(path), path)
    require_keys(d, ("data", "labels"), path, "MetaOptNet CIFAR dict {'data': uint8 (N,32,32,3), 'labels': [int]}")
    images = images_nhwc_to_chw(d["data"], path, "data")
    labels = int_labels(d["labels"], images.shape[0], path, "labels")
    names = {int(c): FINE_LABEL_NAMES[c] for c in np.unique(labels) if 0 <= c < 100}
    return FewShotSource(images, labels, split=split, name=dataset, mean=CIFAR_MEAN, std=CIFAR_STD,
                         class_names=names, path=path)


#: the largest image (pixels) the folder reader decodes
_MAX_PIXELS = 1024 * 1024


def load_l2l_cifarfs_folder(folder: str, split: str) -> FewShotSource:
    """Read learn2learn's ``cifarfs/processed/<split>/<class>/*.png`` folder of one split."""
    import torch
    from PIL import Image
    from tqdm import tqdm

    from .base import FewShotSource

    classes = sorted(e for e in os.listdir(folder) if os.path.isdir(os.path.join(folder, e)))
    if not classes:
        raise ValueError(f"{folder}: no class folders; expected {folder}/<class name>/*.png")
    fine = {n: i for i, n in enumerate(FINE_LABEL_NAMES)}
    unknown = [c for c in classes if c not in fine]
    ids = {c: fine[c] if c in fine else 100 + unknown.index(c) for c in classes}
    files = [(os.path.join(folder, c, f), ids[c]) for c in classes
             for f in sorted(os.listdir(os.path.join(folder, c))) if f.lower().endswith(".png")]
    if not files:
        raise ValueError(f"{folder}: no .png images in the class folders")
    images, labels = [], []
    for p, c in tqdm(files, desc=f"reading {split} images", disable=True if len(files) < 5000 else None, leave=False):
        try:
            with Image.open(p) as im:    # reads the header only: the declared size is checked first
                if im.size[0] * im.size[1] > _MAX_PIXELS:
                    raise ValueError(f"{p}: declares a {im.size[0]}x{im.size[1]} image; CIFAR images are "
                                     f"32x32 (refused before decoding it)")
                img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        except ValueError as e:
            if str(e).startswith(f"{p}: "):
                raise
            raise ValueError(f"{p}: not a readable PNG image ({type(e).__name__}); replace or remove it") from None
        except Image.DecompressionBombError:   # PIL refuses the header of a huge image itself
            raise ValueError(f"{p}: declares an image of more than {2 * Image.MAX_IMAGE_PIXELS} pixels; CIFAR "
                             f"images are 32x32 (refused before decoding it)") from None
        except (OSError, SyntaxError) as e:   # PIL: UnidentifiedImageError, truncated data
            raise ValueError(f"{p}: not a readable PNG image ({type(e).__name__}); replace or remove it") from None
        if images and img.shape != images[0].shape:
            raise ValueError(f"{p}: image of shape {tuple(img.shape)}, expected {tuple(images[0].shape)} like the others")
        images.append(img)
        labels.append(c)
    data = torch.stack(images).contiguous()
    names = {ids[c]: c for c in classes}
    return FewShotSource(data, labels, split=split, name="cifar-fs", mean=CIFAR_MEAN, std=CIFAR_STD,
                         class_names=names, path=folder)


def l2l_folder_candidates(d: str, split: str) -> List[str]:
    return [os.path.join(d, "cifarfs", "processed", split), os.path.join(d, "processed", split)]


# -- building the splits from the official archive ----------------------------------------
def split_fine_labels(dataset: str, fine_names: List[str], coarse_of_fine: Dict[int, int]) -> Dict[str, List[int]]:
    """Fine-label indices of each split of ``dataset`` ("cifar-fs" or "fc100").

    ``coarse_of_fine`` maps a fine label to its coarse label (read from the archive).
    """
    if dataset == "cifar-fs":
        index = {n: i for i, n in enumerate(fine_names)}
        out = {}
        for split in ("val", "test"):
            missing = [n for n in CIFAR_FS_SPLIT[split] if n not in index]
            if missing:
                raise ValueError(f"CIFAR-100 meta lacks fine label names {missing} of the CIFAR-FS {split} split")
            out[split] = sorted(index[n] for n in CIFAR_FS_SPLIT[split])
        held = set(out["val"]) | set(out["test"])
        out["train"] = [i for i in range(len(fine_names)) if i not in held]
        return {s: out[s] for s in SPLITS}
    if dataset == "fc100":
        return {s: sorted(f for f, c in coarse_of_fine.items() if c in FC100_SPLIT[s]) for s in SPLITS}
    raise ValueError(f"dataset must be 'cifar-fs' or 'fc100', got {dataset!r}")


#: the largest archive member read (the official ``train`` is ~155 MB uncompressed)
_MAX_MEMBER_BYTES = 512 * 2 ** 20


def _read_folder(folder: str):
    """The members of torchvision's extracted ``cifar-100-python/`` folder (or its parent)."""
    if not all(os.path.isfile(os.path.join(folder, m)) for m in ("train", "test", "meta")) \
            and os.path.isdir(os.path.join(folder, "cifar-100-python")):
        folder = os.path.join(folder, "cifar-100-python")
    missing = [m for m in ("train", "test", "meta") if not os.path.isfile(os.path.join(folder, m))]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {missing}; expected the extracted cifar-100-python/ folder "
                                f"(train, test, meta) or the cifar-100-python.tar.gz archive")
    parts = {}
    for m in ("train", "test", "meta"):
        path = os.path.join(folder, m)
        if os.path.getsize(path) > _MAX_MEMBER_BYTES:
            raise ValueError(f"{path}: {os.path.getsize(path) / 2 ** 20:.0f} MiB; the official one is under 200 MiB")
        parts[m] = str_keys(load_pickle(path), path)
    return parts


def _read_archive(archive_path: str):
    if os.path.isdir(archive_path):   # torchvision's datasets.CIFAR100 leaves the archive extracted
        return _read_folder(archive_path)
    if not os.path.isfile(archive_path):
        raise FileNotFoundError(f"{archive_path}: CIFAR-100 archive not found (expected cifar-100-python.tar.gz)")
    try:
        tar = tarfile.open(archive_path, "r:*")
    except tarfile.TarError:
        # one line: tarfile's message lists every compression method tried, one per line
        raise ValueError(f"{archive_path}: not a readable tar archive (expected the official "
                         f"cifar-100-python.tar.gz)") from None
    parts, seen = {}, {}
    with tar:
        try:
            for m in tar:          # as the headers come: a declared size is checked before the next read
                base = os.path.basename(m.name)
                if m.isfile() and base in ("train", "test", "meta"):
                    if base in parts:   # the last one used to win silently
                        raise ValueError(f"{archive_path}: two members named {base!r} ({seen[base]} and {m.name}); "
                                         f"expected the official cifar-100-python.tar.gz")
                    if m.size > _MAX_MEMBER_BYTES:   # declared size, checked before reading: no memory bomb
                        raise ValueError(f"{archive_path}: member {m.name} declares {m.size / 2 ** 20:.0f} MiB; the "
                                         f"official one is under 200 MiB (refused before reading it)")
                    seen[base] = m.name
                    parts[base] = str_keys(loads_pickle(tar.extractfile(m).read(), f"{archive_path}:{m.name}"),
                                           f"{archive_path}:{m.name}")
        except (EOFError, tarfile.TarError, zlib.error, OSError) as e:   # truncated or corrupt compressed data
            raise ValueError(f"{archive_path}: truncated or corrupt archive ({type(e).__name__}: "
                             f"{str(e).strip()[:120]}); download cifar-100-python.tar.gz again") from None
    missing = [p for p in ("train", "test", "meta") if p not in parts]
    if missing:
        raise ValueError(f"{archive_path}: missing member(s) {missing}; expected cifar-100-python/{{train,test,meta}}")
    return parts


def build_cifar_fs_fc100(archive_path: str, out_dir: str, dataset: str) -> Dict[str, str]:
    """Write MetaOptNet-format pickles of ``dataset`` ("cifar-fs" or "fc100") built from the
    official ``cifar-100-python.tar.gz``; return {split: written path}.

    Each class keeps all its 600 images (500 from the archive's ``train`` then 100 from
    ``test``); images are converted from (N, 3072) R/G/B planes to uint8 (N, 32, 32, 3) and
    ``labels`` are CIFAR-100 fine-label indices.  Files are written atomically.
    """
    dataset = dataset.lower().replace("_", "-")
    if dataset not in METAOPTNET_PREFIX:
        raise ValueError(f"dataset must be 'cifar-fs' or 'fc100', got {dataset!r}")
    parts = _read_archive(archive_path)
    meta = parts["meta"]
    require_keys(meta, ("fine_label_names",), f"{archive_path}:meta", "'fine_label_names' and 'coarse_label_names'")
    fine_names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta["fine_label_names"]]
    datas, fines, coarses = [], [], []
    for member in ("train", "test"):
        d, where = parts[member], f"{archive_path}:{member}"
        require_keys(d, ("data", "fine_labels", "coarse_labels"), where,
                     "{'data': uint8 (N, 3072), 'fine_labels': [int], 'coarse_labels': [int]}")
        x = d["data"]
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
            raise ValueError(f"{where}: 'data' must be uint8 (N, 3072); got {getattr(x, 'dtype', type(x))} "
                             f"{getattr(x, 'shape', '')}")
        datas.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        fines.append(int_labels(d["fine_labels"], x.shape[0], where, "fine_labels"))
        coarses.append(int_labels(d["coarse_labels"], x.shape[0], where, "coarse_labels"))
    data = np.concatenate(datas)
    fine, coarse = np.concatenate(fines), np.concatenate(coarses)
    for name, labels, n in (("fine_labels", fine, len(fine_names)), ("coarse_labels", coarse, 20)):
        bad = labels[(labels < 0) | (labels >= n)]
        if bad.size:   # images of such labels would belong to no split and vanish silently
            raise ValueError(f"{archive_path}: '{name}' holds {bad.size} label(s) outside 0..{n - 1} "
                             f"(e.g. {int(bad[0])}); not the official CIFAR-100 archive")
    coarse_of_fine = {int(f): int(c) for f, c in zip(fine, coarse)}
    splits = split_fine_labels(dataset, fine_names, coarse_of_fine)
    os.makedirs(out_dir, exist_ok=True)
    remove_stale_temp_files(out_dir, dataset)
    # every split is written in full (as a temporary file) before any file is replaced, so
    # that a killed run never leaves splits of two archives side by side (the renames at
    # the end take microseconds; the build, minutes)
    staged = {}
    try:
        for split, classes in splits.items():
            mask = np.isin(fine, classes)
            order = np.argsort(fine[mask], kind="stable")       # class-major, archive order within class
            out = {"data": np.ascontiguousarray(data[mask][order]), "labels": fine[mask][order].tolist()}
            path = os.path.join(out_dir, metaoptnet_file(dataset, split))
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=out_dir)
            staged[split] = (tmp, path)
            with os.fdopen(fd, "wb") as f:
                pickle.dump(out, f, protocol=4)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, default_file_mode())
        for tmp, path in staged.values():
            os.replace(tmp, path)
    except OSError as e:
        if e.filename is None:   # a write error (disk full) names no file: name the one being written
            raise OSError(e.errno, e.strerror or str(e), list(staged.values())[-1][1] if staged else out_dir) from None
        raise
    finally:
        for tmp, _ in staged.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
    return {split: path for split, (_, path) in staged.items()}


def remove_stale_temp_files(out_dir: str, dataset: str) -> list:
    """Remove the temporary files a killed ``prepare`` of ``dataset`` left in ``out_dir``
    (``.CIFAR_FS_train.pickle.XXXXXXXX.tmp``, up to 118 MB each); nothing else."""
    names = {metaoptnet_file(dataset, split) for split in ("train", "val", "test")}
    removed = []
    for entry in os.listdir(out_dir):
        base = entry[1:].split(".pickle.")[0] + ".pickle" if entry.startswith(".") else ""
        if base in names and entry.endswith(".tmp") and os.path.isfile(os.path.join(out_dir, entry)):
            os.unlink(os.path.join(out_dir, entry))
            removed.append(entry)
    return removed
