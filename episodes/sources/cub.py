"""CUB-200-2011 (Wah et al. 2011) in the few-shot split of Chen et al. 2019 ("A Closer Look at
Few-shot Classification"): 100 / 50 / 50 bird species.

Read from the official release (see docs/data.md)::

    CUB_200_2011/classes.txt               "1 001.Black_footed_Albatross"    (class id, folder name)
    CUB_200_2011/images.txt                "1 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    CUB_200_2011/image_class_labels.txt    "1 1"                              (image id, class id)
    CUB_200_2011/images/<class folder>/<image>.jpg

or straight from the official ``CUB_200_2011.tgz`` (streamed with ``tarfile``: nothing is
extracted).  The data root may hold ``CUB_200_2011/`` (or the archive) or be that folder.

Protocol:

* **split**: class ``i`` (0-based, in ``classes.txt`` order, i.e. by class id) is train if
  ``i % 2 == 0``, val if ``i % 4 == 1``, test if ``i % 4 == 3`` (Chen et al.'s
  ``write_CUB_filelist.py`` numbers the sorted class folders, which is the same order);
  class ids are ``i``, so ids of different splits never collide;
* **images**: per class in ``images.txt`` order (by image id); decoded to RGB (the few grey
  JPEGs are replicated to three channels), resized to 96x96 (bilinear, ``int(84 * 1.15)``,
  aspect ratio not kept) and centre-cropped to 84x84: Chen et al.'s evaluation transform
  (``Scale([96, 96])``, ``CenterCrop(84)``).  Stored as uint8 (n, 3, 84, 84);
* **normalisation**: ImageNet's mean / std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225),
  as Chen et al. use for every dataset.

Decoding 11,788 JPEGs dominates the load time; it runs in a thread pool (PIL releases the
GIL while it decodes and resizes).  Only the requested split's images are decoded.
"""
from __future__ import annotations

import io
import os
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .base import FewShotSource
from .imagefile import decode_resized

__all__ = ["CUB_MEAN", "CUB_STD", "IMAGE_SIZE", "RESIZE", "ARCHIVE", "FOLDER", "METADATA", "split_of_class",
           "find_cub", "load_cub", "decode_jpeg", "expected_layout"]

CUB_MEAN = (0.485, 0.456, 0.406)
CUB_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 84
RESIZE = int(IMAGE_SIZE * 1.15)        # 96
ARCHIVE = "CUB_200_2011.tgz"
FOLDER = "CUB_200_2011"
METADATA = ("classes.txt", "images.txt", "image_class_labels.txt")
#: threads decoding images (None: the number of CPUs, at most 4)
WORKERS: Optional[int] = None
#: the largest image (pixels) decoded; CUB's are at most 500 pixels a side
_MAX_PIXELS = 4096 * 4096
#: the largest metadata member read from the archive (the official images.txt is ~500 KB)
_MAX_TEXT_BYTES = 64 * 2 ** 20


def expected_layout() -> str:
    return (f"{FOLDER}/ with {', '.join(METADATA)} and images/<class>/*.jpg, or the official {ARCHIVE}")


def split_of_class(i: int) -> Optional[str]:
    """Chen et al.'s split of the class at 0-based position ``i`` of ``classes.txt`` (None: in no split)."""
    if i % 2 == 0:
        return "train"
    return "val" if i % 4 == 1 else "test"


def find_cub(dirs) -> Tuple[Optional[str], Optional[str]]:
    """``("folder", path)`` of the first of ``dirs`` that is (or holds) ``CUB_200_2011/`` with
    ``classes.txt``, else ``("archive", path)`` of the first ``CUB_200_2011.tgz``; ``(None, None)``."""
    for d in dirs:
        for cand in (d, os.path.join(d, FOLDER)):
            if os.path.isfile(os.path.join(cand, "classes.txt")) or (os.path.isdir(os.path.join(cand, "images")) \
                    and os.path.basename(os.path.normpath(cand)) == FOLDER):
                return "folder", cand
    for d in dirs:
        if os.path.isfile(os.path.join(d, ARCHIVE)):
            return "archive", os.path.join(d, ARCHIVE)
    return None, None


# -- metadata -----------------------------------------------------------------------------
def _pairs(text: str, where: str, what: str) -> List[Tuple[int, str]]:
    """Lines ``"<id> <value>"`` -> [(id, value)] (blank lines skipped)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(" ", 1)
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1].strip():
            raise ValueError(f"{where}: line {n} is {line.strip()[:60]!r}; expected '<id> {what}'")
        out.append((int(parts[0]), parts[1].strip()))
    if not out:
        raise ValueError(f"{where}: empty; expected lines '<id> {what}'")
    ids = [i for i, _ in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{where}: id {dup} appears on two lines; expected one line per id")
    return out


def _text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{where}: not a text file (expected lines '<id> <value>')") from None


def _plan(texts: Dict[str, bytes], where: Dict[str, str], split: str):
    """From the three metadata files: ``(classes, images)`` of ``split``, where ``classes`` is
    [(class index i, folder name)] and ``images`` [(relative path 'folder/name.jpg', i)] in
    class then image-id order."""
    classes = _pairs(_text(texts["classes.txt"], where["classes.txt"]), where["classes.txt"], "<class folder>")
    images = dict(_pairs(_text(texts["images.txt"], where["images.txt"]), where["images.txt"], "<folder>/<image>.jpg"))
    labels = _pairs(_text(texts["image_class_labels.txt"], where["image_class_labels.txt"]),
                    where["image_class_labels.txt"], "<class id>")
    classes.sort()
    index = {cid: i for i, (cid, _) in enumerate(classes)}
    folder = {cid: name for cid, name in classes}
    per_class: Dict[int, List[Tuple[int, str]]] = {}
    for image_id, value in labels:
        if not value.isdigit() or int(value) not in index:
            raise ValueError(f"{where['image_class_labels.txt']}: image {image_id} has class {value!r}, not a class "
                             f"id of {where['classes.txt']}")
        if image_id not in images:
            raise ValueError(f"{where['image_class_labels.txt']}: image {image_id} is not listed in "
                             f"{where['images.txt']}")
        rel = images[image_id]
        cid = int(value)
        if rel.split("/")[0] != folder[cid]:   # the two files disagree: some images would change class
            raise ValueError(f"{where['images.txt']}: image {image_id} ({rel}) lies outside its class folder "
                             f"{folder[cid]}/ (class {cid} in {where['image_class_labels.txt']})")
        per_class.setdefault(cid, []).append((image_id, rel))
    unlabelled = sorted(set(images) - {i for i, _ in labels})
    if unlabelled:
        raise ValueError(f"{where['images.txt']}: image {unlabelled[0]} has no class in "
                         f"{where['image_class_labels.txt']} ({len(unlabelled)} such images)")
    chosen = [(i, name) for i, (cid, name) in enumerate(classes) if split_of_class(i) == split]
    if not chosen:
        raise ValueError(f"{where['classes.txt']}: {len(classes)} classes leave none for the {split} split; "
                         f"expected the 200 classes of CUB-200-2011")
    plan = []
    for i, name in chosen:
        cid = classes[i][0]
        if not per_class.get(cid):
            raise ValueError(f"{where['image_class_labels.txt']}: class {cid} ({name}) has no images")
        plan += [(rel, i) for _, rel in sorted(per_class[cid])]
    return chosen, plan


# -- decoding -----------------------------------------------------------------------------
def decode_jpeg(data: bytes, where: str) -> np.ndarray:
    """One image -> uint8 (84, 84, 3): RGB, resized to 96x96 (bilinear), centre crop 84x84."""
    big = decode_resized(data, where, kind="JPEG", mode="RGB", size=(RESIZE, RESIZE), resample="BILINEAR",
                         max_pixels=_MAX_PIXELS, expected="CUB images are at most 500x500")
    top = int(round((RESIZE - IMAGE_SIZE) / 2.0))       # torchvision's CenterCrop offsets
    return np.asarray(big, dtype=np.uint8)[top:top + IMAGE_SIZE, top:top + IMAGE_SIZE]


def _workers() -> int:
    return WORKERS or max(1, min(4, os.cpu_count() or 1))


def _decode_stream(items, n: int, split: str) -> np.ndarray:
    """Decode ``n`` images given as an iterator of ``(where, bytes or reader)`` in a thread pool."""
    from tqdm import tqdm

    def one(item):
        where, data = item
        return decode_jpeg(data() if callable(data) else data, where)

    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    workers = _workers()
    with ThreadPoolExecutor(workers) as pool:
        results = _bounded_map(pool, one, items, 8 * workers) if workers > 1 else map(one, items)
        bar = tqdm(results, total=n, desc=f"cub: decoding {split} images", disable=True if n < 1000 else None,
                   leave=False)
        count = 0
        for i, img in enumerate(bar):
            out[i] = img
            count += 1
    if count != n:   # pragma: no cover - the callers check completeness before decoding
        raise ValueError(f"cub/{split}: decoded {count} images, expected {n}")
    return out


def _bounded_map(pool, fn, items, ahead: int):
    """``pool.map(fn, items)`` in order, with at most ``ahead`` items in flight (a streamed
    archive is not read far ahead of the decoding: bounded memory)."""
    from collections import deque
    pending = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# -- the two layouts ----------------------------------------------------------------------
def _load_folder(folder: str, split: str):
    texts, where = {}, {}
    for name in METADATA:
        p = os.path.join(folder, name)
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: missing; expected {expected_layout()}")
        with open(p, "rb") as f:
            texts[name] = f.read()
        where[name] = p
    chosen, plan = _plan(texts, where, split)
    items = []
    for rel, _ in plan:
        p = os.path.join(folder, "images", *rel.split("/"))
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: missing (listed in {where['images.txt']}); expected {expected_layout()}")

        def read(p=p) -> bytes:
            with open(p, "rb") as f:
                return f.read()
        items.append((p, read))
    return chosen, plan, _decode_stream(iter(items), len(items), split)


def _member_key(name: str) -> Tuple[str, str]:
    """``('meta', 'classes.txt')`` / ``('image', 'folder/name.jpg')`` / ``('', '')`` of an archive member."""
    parts = [p for p in name.split("/") if p and p != "."]
    if len(parts) == 2 and parts[0] == FOLDER and parts[1] in METADATA:
        return "meta", parts[1]
    if len(parts) == 4 and parts[0] == FOLDER and parts[1] == "images":
        return "image", f"{parts[2]}/{parts[3]}"
    return "", ""


def _open_stream(path: str):
    try:
        return tarfile.open(path, "r|*")
    except tarfile.TarError:
        raise ValueError(f"{path}: not a readable tar archive (expected the official {ARCHIVE})") from None


def _archive_error(path: str, e: BaseException) -> ValueError:
    return ValueError(f"{path}: truncated or corrupt archive ({type(e).__name__}: {str(e).strip()[:120]}); "
                      f"download {ARCHIVE} again")


def _read_metadata(path: str) -> Dict[str, bytes]:
    """Stream ``path`` until the three metadata members are read (often at the start)."""
    texts: Dict[str, bytes] = {}
    try:
        with _open_stream(path) as tar:
            for m in tar:
                kind, key = _member_key(m.name)
                if kind == "meta" and m.isfile():
                    if m.size > _MAX_TEXT_BYTES:
                        raise ValueError(f"{path}: member {m.name} declares {m.size / 2 ** 20:.0f} MiB; the official "
                                         f"one is under 1 MiB (refused before reading it)")
                    texts[key] = tar.extractfile(m).read()
                    if len(texts) == len(METADATA):
                        break
    except (EOFError, tarfile.TarError, zlib.error, OSError) as e:
        raise _archive_error(path, e) from None
    missing = [f"{FOLDER}/{n}" for n in METADATA if n not in texts]
    if missing:
        raise ValueError(f"{path}: missing member(s) {missing}; expected the official {ARCHIVE}")
    return texts


def _load_archive(path: str, split: str):
    texts = _read_metadata(path)
    where = {n: f"{path}:{FOLDER}/{n}" for n in METADATA}
    chosen, plan = _plan(texts, where, split)
    slot = {rel: j for j, (rel, _) in enumerate(plan)}
    found: Dict[str, int] = {}
    order: List[int] = []

    def members():       # the split's images, as the archive streams them (a second pass)
        try:
            with _open_stream(path) as tar:
                for m in tar:
                    kind, key = _member_key(m.name)
                    if kind != "image" or key not in slot or not m.isfile():
                        continue
                    if key in found:
                        raise ValueError(f"{path}: two members named {m.name}; expected the official {ARCHIVE}")
                    if m.size > 64 * 2 ** 20:
                        raise ValueError(f"{path}: member {m.name} declares {m.size / 2 ** 20:.0f} MiB; CUB images "
                                         f"are under 1 MiB (refused before reading it)")
                    found[key] = len(order)
                    order.append(slot[key])
                    yield f"{path}:{m.name}", tar.extractfile(m).read()
        except (EOFError, tarfile.TarError, zlib.error, OSError) as e:
            raise _archive_error(path, e) from None

    decoded = _decode_stream(_counted(members(), len(plan), path, slot, found), len(plan), split)
    out = np.empty_like(decoded)
    out[np.asarray(order, dtype=np.int64)] = decoded     # back to class / image-id order
    return chosen, plan, out


def _counted(items, n: int, path: str, slot: Dict[str, int], found: Dict[str, int]):
    """``items``, then a one-line error if fewer than ``n`` came (images listed but absent)."""
    count = 0
    for item in items:
        count += 1
        yield item
    if count != n:
        missing = next(rel for rel in slot if rel not in found)
        raise ValueError(f"{path}: member {FOLDER}/images/{missing} is missing ({n - count} of the listed images "
                         f"are); download {ARCHIVE} again")


def load_cub(kind: str, path: str, split: str) -> FewShotSource:
    """Split ``split`` of CUB from ``path``, a ``CUB_200_2011/`` folder (``kind="folder"``) or
    the ``CUB_200_2011.tgz`` archive (``kind="archive"``)."""
    chosen, plan, images = (_load_folder if kind == "folder" else _load_archive)(path, split)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    labels = np.asarray([i for _, i in plan], dtype=np.int64)
    return FewShotSource(data, labels, split=split, name="cub", mean=CUB_MEAN, std=CUB_STD,
                         class_names=dict(chosen), path=path)
