"""Load time of the Omniglot and CUB-200-2011 readers on full-size trees in the real layouts.

Builds (in ``--root``, default a temporary folder removed afterwards):

* Omniglot as torchvision leaves it: ``omniglot-py/images_{background,evaluation}/`` with the
  real 50 alphabets, 1623 characters and 20 drawings each (32,460 1-bit 105x105 PNGs of
  random blocks), and the two zips of the same trees;
* CUB-200-2011: 200 class folders, 11,788 JPEGs of 500x375 / 375x500 pixels (quality 75;
  50 distinct pictures of smooth colour gradients plus noise, repeated), the three metadata
  files, and ``CUB_200_2011.tgz`` of the tree (images first, the text files after them, so
  that the archive is streamed twice).

Then times ``episodes.sources.load_source`` for each split and layout, with the default
thread pool and with one thread (``WORKERS = 1``), and prints a markdown table::

    .venv/bin/python scripts/bench_data_load.py [--root DIR] [--only omniglot|cub] [--skip-archives]

The pixels are synthetic, so only the time is meaningful (decoding real photographs of the
same size costs about as much per pixel).
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.append(os.path.join(ROOT, "tests"))

from episodes.sources import cub as cub_module, load_source, omniglot as omniglot_module  # noqa: E402
from fixtures_omniglot_cub import cub_class_folders, write_omniglot  # noqa: E402

CUB_IMAGES = 11788


def build_omniglot(root: str) -> None:
    write_omniglot(root, per_character=20)
    zroot = os.path.join(root, "zips", "omniglot-py")
    os.makedirs(zroot)
    base = os.path.join(root, "omniglot-py")
    for half in omniglot_module.HALVES:
        with zipfile.ZipFile(os.path.join(zroot, f"{half}.zip"), "w") as z:
            for d, _, files in sorted(os.walk(os.path.join(base, half))):
                for f in sorted(files):
                    z.write(os.path.join(d, f), os.path.relpath(os.path.join(d, f), base))


def _pictures(n: int = 50, seed: int = 0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        w, h = (500, 375) if k % 3 else (375, 500)
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([(x * rng.uniform(0.2, 1.0) + y * rng.uniform(0.2, 1.0) + rng.uniform(0, 255)) % 256
                        for _ in range(3)], axis=-1)
        img = np.clip(img + rng.normal(0, 10, size=img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=75)
        out.append(buf.getvalue())
    return out


def build_cub(root: str, skip_archive: bool) -> None:
    pictures = _pictures()
    folders = cub_class_folders(200)
    per_class = np.full(200, CUB_IMAGES // 200)
    per_class[: CUB_IMAGES % 200] += 1
    base = os.path.join(root, "CUB_200_2011")
    images, labels, k = [], [], 0
    for i, folder in enumerate(folders):
        os.makedirs(os.path.join(base, "images", folder))
        for j in range(per_class[i]):
            k += 1
            rel = f"{folder}/{folder.split('.', 1)[1]}_{k:04d}_{j}.jpg"
            with open(os.path.join(base, "images", *rel.split("/")), "wb") as f:
                f.write(pictures[k % len(pictures)])
            images.append(f"{k} {rel}")
            labels.append(f"{k} {i + 1}")
    for name, lines in (("classes.txt", [f"{i + 1} {f}" for i, f in enumerate(folders)]), ("images.txt", images),
                        ("image_class_labels.txt", labels)):
        with open(os.path.join(base, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    if skip_archive:
        return
    os.makedirs(os.path.join(root, "archive"))
    with tarfile.open(os.path.join(root, "archive", "CUB_200_2011.tgz"), "w:gz", compresslevel=6) as tar:
        tar.add(os.path.join(base, "images"), arcname="CUB_200_2011/images")
        for name in ("classes.txt", "images.txt", "image_class_labels.txt"):
            tar.add(os.path.join(base, name), arcname=f"CUB_200_2011/{name}")


def timed(dataset: str, root: str, split: str, module, workers):
    module.WORKERS = workers
    t = time.perf_counter()
    src = load_source(dataset, root, split)
    return time.perf_counter() - t, src


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", help="build the trees here (kept); default: a temporary folder, removed")
    p.add_argument("--only", choices=["omniglot", "cub"])
    p.add_argument("--skip-archives", action="store_true", help="folders only (no zips / tgz)")
    args = p.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="bench_data_load.")
    rows = []
    try:
        cases = []
        if args.only in (None, "omniglot"):
            t = time.perf_counter()
            om = os.path.join(root, "omniglot")
            if not os.path.isdir(om):
                os.makedirs(om)
                build_omniglot(om)
            print(f"omniglot tree: {time.perf_counter() - t:.0f} s to build", file=sys.stderr)
            cases += [("omniglot", "folders", om, omniglot_module)]
            if not args.skip_archives:
                cases += [("omniglot", "zips", os.path.join(om, "zips"), omniglot_module)]
        if args.only in (None, "cub"):
            t = time.perf_counter()
            cb = os.path.join(root, "cub")
            if not os.path.isdir(cb):
                os.makedirs(cb)
                build_cub(cb, args.skip_archives)
            print(f"cub tree: {time.perf_counter() - t:.0f} s to build", file=sys.stderr)
            cases += [("cub", "folder", cb, cub_module)]
            if not args.skip_archives:
                cases += [("cub", "tgz (streamed)", os.path.join(cb, "archive"), cub_module)]
        default = max(1, min(4, os.cpu_count() or 1))
        for dataset, layout, where, module in cases:
            for split in ("train", "val", "test"):
                for workers in sorted({default, 1}, reverse=True):
                    seconds, src = timed(dataset, where, split, module, workers)
                    rows.append((dataset, layout, split, len(src), len(src.classes), workers, seconds))
                    print(f"{dataset} {layout} {split}: {len(src)} images, {workers} thread(s): {seconds:.1f} s",
                          file=sys.stderr)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{os.cpu_count()} CPUs visible\n")
    print("| dataset | layout | split | images (with rotations) | classes | threads | load time (s) |")
    print("|---|---|---|---|---|---|---|")
    for dataset, layout, split, n, c, w, s in rows:
        print(f"| {dataset} | {layout} | {split} | {n} | {c} | {w} | {s:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
