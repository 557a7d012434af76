"""Writers of small Omniglot and CUB-200-2011 trees and archives in the *real* on-disk layouts
(random pixels), for tests; import as ``fixtures_formats`` is imported (``tests/`` on ``sys.path``).

* Omniglot, torchvision's layout: ``omniglot-py/images_background/<alphabet>/<character>/NNNN_DD.png``
  (1-bit 105x105 PNGs) and ``images_evaluation/...``, with the real alphabet names and
  character counts (30 alphabets / 964 characters, 20 / 659), or torchvision's
  ``images_background.zip`` / ``images_evaluation.zip`` (the same tree inside).  Only the
  number of drawings per character is small.
* CUB-200-2011: ``CUB_200_2011/{classes,images,image_class_labels,train_test_split,bounding_boxes}.txt``
  and ``images/<NNN.Name>/<Name>_NNNN_NNN.jpg`` (JPEGs of varied sizes, one grey), or the
  ``CUB_200_2011.tgz`` of that tree (top-level ``attributes.txt`` too, as the official one).
"""
from __future__ import annotations

import io
import os
import tarfile
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

BACKGROUND = {
    "Alphabet_of_the_Magi": 20, "Anglo-Saxon_Futhorc": 29, "Arcadian": 26, "Armenian": 41,
    "Asomtavruli_(Georgian)": 40, "Balinese": 24, "Bengali": 46, "Blackfoot_(Canadian_Aboriginal_Syllabics)": 14,
    "Braille": 26, "Burmese_(Myanmar)": 34, "Cyrillic": 33, "Early_Aramaic": 22, "Futurama": 26, "Grantha": 43,
    "Greek": 24, "Gujarati": 48, "Hebrew": 22, "Inuktitut_(Canadian_Aboriginal_Syllabics)": 16,
    "Japanese_(hiragana)": 52, "Japanese_(katakana)": 47, "Korean": 40, "Latin": 26, "Malay_(Jawi_-_Arabic)": 40,
    "Mkhedruli_(Georgian)": 41, "N_Ko": 33, "Ojibwe_(Canadian_Aboriginal_Syllabics)": 14, "Sanskrit": 42,
    "Syriac_(Estrangelo)": 23, "Tagalog": 17, "Tifinagh": 55}
EVALUATION = {
    "Angelic": 20, "Atemayar_Qelisayer": 26, "Atlantean": 26, "Aurek-Besh": 26, "Avesta": 26, "Ge_ez": 26,
    "Glagolitic": 45, "Gurmukhi": 45, "Kannada": 41, "Keble": 26, "Malayalam": 47, "Manipuri": 40,
    "Mongolian": 30, "Old_Church_Slavonic_(Cyrillic)": 45, "Oriya": 46, "Sylheti": 28, "Syriac_(Serto)": 23,
    "Tengwar": 25, "Tibetan": 42, "ULOG": 26}
assert sum(BACKGROUND.values()) == 964 and sum(EVALUATION.values()) == 659


def omniglot_characters() -> List[Tuple[str, str, str]]:
    """(half, alphabet, character) of the whole release, background then evaluation, each in
    the order of the real folder listing (not sorted: the reader must sort)."""
    out = []
    for half, alphabets in (("images_background", BACKGROUND), ("images_evaluation", EVALUATION)):
        for a in reversed(list(alphabets)):            # a listing order that is not the sorted one
            out += [(half, a, f"character{j:02d}") for j in range(alphabets[a], 0, -1)]
    return out


def _drawing(rng: np.random.Generator) -> bytes:
    """A 105x105 1-bit PNG (white background, black blocks of 7x7 pixels and a few stray ones)."""
    from PIL import Image
    ink = np.kron(rng.random((15, 15)) < 0.25, np.ones((7, 7), dtype=bool))
    ink |= rng.random((105, 105)) < 0.02
    buf = io.BytesIO()
    Image.fromarray(~ink).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def write_omniglot(root: str, per_character: int = 2, layout: str = "folders", seed: int = 0,
                   halves: Sequence[str] = ("images_background", "images_evaluation")) -> Dict[tuple, List[bytes]]:
    """``root/omniglot-py/`` with ``halves`` as folders (``layout="folders"``) or zips
    (``"zip"``); returns ``{(half, alphabet, character): [png bytes in file-name order]}``."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "omniglot-py")
    os.makedirs(base, exist_ok=True)
    written: Dict[tuple, List[bytes]] = {}
    zips = {h: zipfile.ZipFile(os.path.join(base, f"{h}.zip"), "w") for h in halves} if layout == "zip" else {}
    try:
        for k, (half, a, c) in enumerate(omniglot_characters()):
            if half not in halves:
                continue
            pngs = [_drawing(rng) for _ in range(per_character)]
            written[(half, a, c)] = pngs
            for j, png in enumerate(pngs):
                name = f"{1000 + k:04d}_{j + 1:02d}.png"        # e.g. 0709_01.png: drawing id, drawer
                if layout == "zip":
                    zips[half].writestr(f"{half}/{a}/{c}/{name}", png)
                else:
                    d = os.path.join(base, half, a, c)
                    os.makedirs(d, exist_ok=True)
                    with open(os.path.join(d, name), "wb") as f:
                        f.write(png)
    finally:
        for z in zips.values():
            z.close()
    return written


# -- CUB-200-2011 --------------------------------------------------------------------------
CUB_NAMES = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani",
             "Crested_Auklet", "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet", "Brewer_Blackbird",
             "Red_winged_Blackbird", "Rusty_Blackbird", "Yellow_headed_Blackbird", "Bobolink", "Indigo_Bunting",
             "Lazuli_Bunting", "Painted_Bunting"]


def cub_class_folders(n_classes: int) -> List[str]:
    return [f"{i + 1:03d}.{CUB_NAMES[i] if i < len(CUB_NAMES) else f'Species_{i + 1}'}" for i in range(n_classes)]


def _jpeg(rng: np.random.Generator, w: int, h: int, grey: bool = False) -> bytes:
    from PIL import Image
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * rng.uniform(0.3, 1.5) + y * rng.uniform(0.3, 1.5) + rng.uniform(0, 255)) % 256
                     for _ in range(3)], axis=-1)
    img = np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(img)
    if grey:
        im = im.convert("L")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def cub_tree(n_classes: int = 16, per_class: Sequence[int] = (4, 5, 6), seed: int = 0) -> Dict[str, bytes]:
    """{path inside the release ('CUB_200_2011/...'): bytes} of a small CUB tree. Image ids
    are numbered class by class, as in the official files; image sizes vary (and one is grey)."""
    rng = np.random.default_rng(seed)
    files: Dict[str, bytes] = {}
    classes, images, labels, split, boxes = [], [], [], [], []
    image_id = 0
    for i, folder in enumerate(cub_class_folders(n_classes)):
        classes.append(f"{i + 1} {folder}")
        species = folder.split(".", 1)[1]
        for j in range(per_class[i % len(per_class)]):
            image_id += 1
            name = f"{species.replace('_', ' ').title().replace(' ', '_')}_{rng.integers(1, 9999):04d}_{image_id}.jpg"
            rel = f"{folder}/{name}"
            w, h = int(rng.integers(60, 160)), int(rng.integers(60, 160))
            files[f"CUB_200_2011/images/{rel}"] = _jpeg(rng, w, h, grey=(i == 1 and j == 0))
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {i + 1}")
            split.append(f"{image_id} {int(j % 2 == 0)}")
            boxes.append(f"{image_id} 10.0 12.0 {w - 20}.0 {h - 24}.0")
    for name, lines in (("classes.txt", classes), ("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("bounding_boxes.txt", boxes)):
        files[f"CUB_200_2011/{name}"] = ("\n".join(lines) + "\n").encode()
    files["CUB_200_2011/README"] = b"CUB-200-2011 (a small test tree in the official layout)\n"
    return files


def write_cub(root: str, files: Dict[str, bytes]) -> str:
    """Write ``files`` (from :func:`cub_tree`) under ``root``; return ``root/CUB_200_2011``."""
    for rel, data in files.items():
        path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return os.path.join(root, "CUB_200_2011")


def write_cub_archive(path: str, files: Dict[str, bytes], metadata_first: bool = False,
                      skip: Optional[Sequence[str]] = ()) -> str:
    """``CUB_200_2011.tgz`` of ``files``: ``attributes.txt`` and the folder entries, then the
    images and the text files (or the text files first), leaving out the paths in ``skip``."""
    def add(tar, name, data=None):
        info = tarfile.TarInfo(name)
        if data is None:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        else:
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

    images = sorted(k for k in files if "/images/" in k)
    texts = sorted(k for k in files if "/images/" not in k)
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "attributes.txt", b"1 has_bill_shape::curved_(up_or_down)\n")
        add(tar, "CUB_200_2011")
        add(tar, "CUB_200_2011/images")
        for k in (texts + images if metadata_first else images + texts):
            if k not in skip:
                add(tar, k, files[k])
    return path
