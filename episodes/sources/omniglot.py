"""Omniglot (Lake et al. 2015) in the few-shot protocol of Vinyals et al. 2016 / Snell et al. 2017.

Read from torchvision's layout (see docs/data.md)::

    omniglot-py/images_background/<alphabet>/<character>/<drawing>.png    (30 alphabets, 964 characters)
    omniglot-py/images_evaluation/<alphabet>/<character>/<drawing>.png    (20 alphabets, 659 characters)

or from torchvision's archives ``images_background.zip`` / ``images_evaluation.zip`` (the same
tree inside, read in memory: nothing is extracted), each half from its folder if present,
else from its zip.  The data root may hold ``omniglot-py/`` or be that folder.

Protocol:

* **character order**: the 964 background characters sorted by (alphabet, character) folder
  name, then the 659 evaluation characters sorted the same way: character ``c`` in 0..1622;
* **split** of these 1623 characters: the first 1200 are meta-training characters, the last
  423 the test characters (Vinyals et al.'s 1200 / 423); validation is carved out of the
  1200 as learn2learn's Omniglot benchmark does (1100 + 100): train = characters 0..1099,
  val = 1100..1199, test = 1200..1622;
* **rotations**: each character rotated by 0, 90, 180 and 270 degrees (counter-clockwise) is
  a class of its own (4400 / 400 / 1692 classes); class id ``4 c + r`` for rotation ``r * 90``;
* **pixels**: each PNG (105x105, 1 bit) is converted to 8-bit grey, resized to 28x28 with
  Lanczos filtering (learn2learn's ``Resize(28, interpolation=LANCZOS)``), then inverted
  (``255 - x``: strokes bright on a dark background, learn2learn's and ProtoNet's ``1 - x``);
  the rotations are exact quarter turns of that 28x28 image (``np.rot90``).  Stored as
  uint8 (n, 1, 28, 28); normalisation mean 0, std 1, i.e. the [0, 1] input of those codes.

Both halves are needed for every split (the first 1200 characters span them), and their
character counts are checked against the official 964 / 659 so that an incomplete
download or extraction can never shift the split silently.
"""
from __future__ import annotations

import io
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .base import FewShotSource
from .imagefile import decode_resized

__all__ = ["OMNIGLOT_MEAN", "OMNIGLOT_STD", "IMAGE_SIZE", "HALVES", "N_CHARACTERS", "SPLIT_CHARACTERS",
           "ROTATIONS", "find_omniglot", "list_characters", "load_omniglot", "decode_png", "expected_layout"]

OMNIGLOT_MEAN = (0.0,)
OMNIGLOT_STD = (1.0,)
IMAGE_SIZE = 28
HALVES = ("images_background", "images_evaluation")
#: characters of each half of the official release
N_CHARACTERS = {"images_background": 964, "images_evaluation": 659}
#: [first, last) character index of each split in the order above
SPLIT_CHARACTERS = {"train": (0, 1100), "val": (1100, 1200), "test": (1200, 1623)}
ROTATIONS = (0, 90, 180, 270)
#: threads decoding images (None: the number of CPUs, at most 4)
WORKERS: Optional[int] = None
#: the largest image (pixels) decoded; Omniglot's are 105x105
_MAX_PIXELS = 1024 * 1024


def expected_layout() -> str:
    return ("omniglot-py/images_background/ and omniglot-py/images_evaluation/ (<alphabet>/<character>/*.png), "
            "or images_background.zip and images_evaluation.zip")


# -- where the two halves are ------------------------------------------------------------
def _half_location(d: str, half: str) -> Optional[str]:
    """``d/half`` (a folder) or ``d/half.zip``, whichever exists (the folder first)."""
    if os.path.isdir(os.path.join(d, half)):
        return os.path.join(d, half)
    if os.path.isfile(os.path.join(d, half + ".zip")):
        return os.path.join(d, half + ".zip")
    return None


def find_omniglot(dirs) -> Tuple[Optional[Dict[str, str]], Optional[str]]:
    """``({half: folder or zip}, None)`` for the first of ``dirs`` (or its ``omniglot-py/``) that
    holds both halves; else ``(None, folder holding only one half or None)``."""
    partial = None
    for d in dirs:
        for cand in (d, os.path.join(d, "omniglot-py")):
            found = {h: _half_location(cand, h) for h in HALVES}
            if all(found.values()):
                return found, None
            if any(found.values()) and partial is None:
                partial = cand
    return None, partial


# -- listing ------------------------------------------------------------------------------
# A character: (alphabet, character, [(where, reader)] one per drawing), where ``where`` names
# the file in messages and ``reader()`` returns its bytes.
Character = Tuple[str, str, List[Tuple[str, Callable[[], bytes]]]]


def _file_reader(path: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()
    return read


def _list_folder(folder: str) -> List[Character]:
    out = []
    for a in sorted(e for e in os.listdir(folder) if os.path.isdir(os.path.join(folder, e))):
        for c in sorted(e for e in os.listdir(os.path.join(folder, a)) if os.path.isdir(os.path.join(folder, a, e))):
            d = os.path.join(folder, a, c)
            pngs = sorted(f for f in os.listdir(d) if f.lower().endswith(".png") and not f.startswith("."))
            if not pngs:
                raise ValueError(f"{d}: no .png drawings in this character folder; expected {expected_layout()}")
            out.append((a, c, [(os.path.join(d, f), _file_reader(os.path.join(d, f))) for f in pngs]))
    return out


def _list_zip(path: str, half: str, opened: List[zipfile.ZipFile]) -> List[Character]:
    try:
        zf = zipfile.ZipFile(path)
        opened.append(zf)                 # closed by the caller once the drawings are read
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable zip archive ({type(e).__name__}); download {half}.zip "
                         f"again") from None
    chars: Dict[Tuple[str, str], List[Tuple[str, zipfile.ZipInfo]]] = {}
    for info in infos:
        parts = [p for p in info.filename.split("/") if p]
        if info.is_dir() or not parts or parts[0] != half or any(p.startswith(".") for p in parts):
            continue        # folders, a __MACOSX/ tree, hidden files
        if len(parts) != 4 or not parts[3].lower().endswith(".png"):
            continue
        if info.file_size > 16 * 2 ** 20:   # declared size, checked before reading: no memory bomb
            raise ValueError(f"{path}:{info.filename}: declares {info.file_size / 2 ** 20:.0f} MiB; Omniglot "
                             f"drawings are about 1 KB (refused before reading it)")
        chars.setdefault((parts[1], parts[2]), []).append((parts[3], info))
    if not chars:
        raise ValueError(f"{path}: no {half}/<alphabet>/<character>/*.png members; expected torchvision's "
                         f"{half}.zip")

    def reader(info: zipfile.ZipInfo, where: str) -> Callable[[], bytes]:
        def read() -> bytes:
            try:
                return zf.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile) as e:   # bad CRC, truncated
                raise ValueError(f"{where}: unreadable zip member ({type(e).__name__}: {str(e)[:80]}); "
                                 f"download {half}.zip again") from None
        return read

    return [(a, c, [(f"{path}:{info.filename}", reader(info, f"{path}:{info.filename}"))
                    for _, info in sorted(members, key=lambda m: m[0])])
            for (a, c), members in sorted(chars.items())]


def list_characters(location: Dict[str, str], opened: Optional[List[zipfile.ZipFile]] = None) -> List[Character]:
    """The 1623 characters in split order: background sorted by (alphabet, character), then
    evaluation sorted the same way (counts checked against the official release).  Zips
    opened to read the drawings are appended to ``opened`` (close them when done)."""
    out = []
    opened = [] if opened is None else opened
    for half in HALVES:
        where = location[half]
        chars = (_list_zip(where, half, opened) if where.endswith(".zip") and os.path.isfile(where)
                 else _list_folder(where))
        if len(chars) != N_CHARACTERS[half]:
            raise ValueError(f"{where}: {len(chars)} character folders, expected the {N_CHARACTERS[half]} of "
                             f"Omniglot's {half} (an incomplete download or extraction?)")
        out += chars
    return out


# -- decoding -----------------------------------------------------------------------------
def decode_png(data: bytes, where: str) -> np.ndarray:
    """One drawing -> uint8 (28, 28): grey, Lanczos-resized to 28x28, inverted (``255 - x``)."""
    small = decode_resized(data, where, kind="PNG", mode="L", size=(IMAGE_SIZE, IMAGE_SIZE), resample="LANCZOS",
                           max_pixels=_MAX_PIXELS, expected="Omniglot drawings are 105x105")
    return 255 - np.asarray(small, dtype=np.uint8)


def _decode_all(files: List[Tuple[str, Callable[[], bytes]]], split: str) -> np.ndarray:
    """Decode every drawing (a thread pool: PIL releases the GIL while it decodes and resizes)."""
    from tqdm import tqdm

    def one(item):
        where, read = item
        return decode_png(read(), where)

    out = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    workers = WORKERS or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        bar = tqdm(pool.map(one, files, chunksize=64) if workers > 1 else map(one, files), total=len(files),
                   desc=f"omniglot: reading {split} drawings", disable=True if len(files) < 5000 else None,
                   leave=False)
        for i, img in enumerate(bar):
            out[i] = img
    return out


def load_omniglot(location: Dict[str, str], split: str) -> FewShotSource:
    """Split ``split`` of Omniglot from ``location`` ({half: folder or zip}, see :func:`find_omniglot`)."""
    opened: List[zipfile.ZipFile] = []
    try:
        chars = list_characters(location, opened)
        lo, hi = SPLIT_CHARACTERS[split]
        files, owner = [], []
        for c in range(lo, hi):
            for item in chars[c][2]:
                files.append(item)
                owner.append(c)
        images = _decode_all(files, split)               # (m, 28, 28), character-major, drawings sorted
    finally:
        for zf in opened:
            zf.close()
    owner = np.asarray(owner, dtype=np.int64)
    data = np.empty((len(ROTATIONS) * len(files), 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    labels = np.empty(len(ROTATIONS) * len(files), dtype=np.int64)
    pos = 0
    names = {}
    for c in range(lo, hi):            # per character: rotation 0 drawings, rotation 90 drawings, ...
        sel = images[owner == c]
        for r in range(len(ROTATIONS)):
            data[pos:pos + len(sel), 0] = np.rot90(sel, k=r, axes=(1, 2))
            labels[pos:pos + len(sel)] = 4 * c + r
            names[4 * c + r] = f"{chars[c][0]}/{chars[c][1]}/rot{ROTATIONS[r]:03d}"
            pos += len(sel)
    path = os.path.commonpath([location[h] for h in HALVES])
    return FewShotSource(torch.from_numpy(data), labels, split=split, name="omniglot", mean=OMNIGLOT_MEAN,
                         std=OMNIGLOT_STD, class_names=names, path=path)
