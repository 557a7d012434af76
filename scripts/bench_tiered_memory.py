"""Resident memory of meta-training on a tieredImageNet-format split read from disk.

    python scripts/bench_tiered_memory.py --n 50000 --batches 50 --workers 0 2 --out results/bench_tiered_memory.json

1. Writes a training split of ``--n`` 84x84 images (synthetic content: smooth random colour
   fields plus pixel noise, so that PNG compresses them about as much as photographs) in
   both real formats under a temporary folder (``--data DIR`` keeps / reuses it):
   MetaOptNet's ``train_images.npz`` (``np.savez``'s archive, written as ``np.savez`` writes
   it but streamed, so this process never holds the array) and Ren et al.'s / learn2learn's
   ``train_images_png.pkl`` (a Python 2 protocol-2 pickle of ``cv2.imencode``-style uint8
   arrays, written by a child process), each with ``train_labels.pkl``.
2. For each format and each ``--workers`` value (the files read once beforehand, so that they
   are in the kernel's page cache as from the second epoch on; ``--cold`` skips that), a
   fresh process loads the split with
   ``episodes.load_source`` and draws ``--batches`` batches of MetaOptNet's tieredImageNet
   training episodes (8 episodes of 5-way 10-shot 6-query, augmentation on: 640 images a
   batch), in the process or through ``episode_loader(num_workers=W)``, and reports its
   peak resident memory (``VmHWM`` of ``/proc/self/status``), the resident memory after the
   first batches and at the end, and each worker's peak (``VmHWM``) and private memory
   (``Private_*`` of ``smaps_rollup``, the pages not shared with the main process).
3. The reference: the same episodes from an in-memory source of the same images
   (``np.load`` of the npz, as an in-memory reader would hold it).

``--interleaved --data DIR`` (DIR of an earlier run) instead times the same batches drawn
alternately in one process from the npz and from memory (CPU time: robust on a busy
machine); ``--baseline OLD`` adds in-memory miniImageNet-size batches of the ``episodes``
package in ``OLD/episodes`` against this one's.

Numbers in BENCHMARKS.md ("tieredImageNet: memory of a split read from disk").
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from episodes.atomic import atomic_write_text  # noqa: E402
WAY, SHOT, QUERY, EPISODES = 5, 10, 6, 8            # MetaOptNet's tieredImageNet training batches
SIZE = 84


# -- the data ------------------------------------------------------------------------------------
def synthetic_images(start: int, n: int, seed: int) -> np.ndarray:
    """Images ``start .. start+n-1`` (uint8 (n, 84, 84, 3)): a 6x6 random colour field upsampled
    (bilinear) plus uniform noise in [-6, 6]; a pure function of (seed, index)."""
    out = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    grid = np.linspace(0, 5, SIZE)
    i0 = np.minimum(grid.astype(int), 4)
    f = (grid - i0)[:, None]
    for j in range(n):
        rng = np.random.default_rng([seed, start + j])
        low = rng.uniform(0, 255, (6, 6, 3))
        rows = low[i0] * (1 - f[:, :, None]) + low[i0 + 1] * f[:, :, None]            # (84, 6, 3)
        img = rows[:, i0] * (1 - f.T[:, :, None]) + rows[:, i0 + 1] * f.T[:, :, None]  # (84, 84, 3)
        img += rng.uniform(-6, 6, img.shape)
        out[j] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def class_labels(n: int, n_classes: int) -> np.ndarray:
    return np.arange(n) * n_classes // n                  # classes of (about) equal size, class-major


def write_npz(path: Path, n: int, seed: int, chunk: int = 2000) -> None:
    """``np.savez(path, images=...)``'s exact layout (a stored zip64 member ``images.npy``),
    streamed chunk by chunk."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("images.npy", "w", force_zip64=True) as f:
            header = {"descr": "|u1", "fortran_order": False, "shape": (n, SIZE, SIZE, 3)}
            np.lib.format.write_array_header_1_0(f, header)
            for lo in range(0, n, chunk):
                f.write(synthetic_images(lo, min(chunk, n - lo), seed).tobytes())
    os.replace(tmp, path)


def write_png_pickle(path: Path, n: int, seed: int) -> None:
    """Ren et al.'s ``train_images_png.pkl`` (run in a child process: it holds the PNG list)."""
    import io

    from PIL import Image
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures_formats import py2_pickle_dumps
    pngs = []
    for lo in range(0, n, 2000):
        for img in synthetic_images(lo, min(2000, n - lo), seed):
            buf = io.BytesIO()
            Image.fromarray(img[..., ::-1]).save(buf, format="PNG")        # cv2.imencode of a BGR image
            pngs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(-1, 1))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(py2_pickle_dumps(pngs))
    os.replace(tmp, path)


def make_data(folder: Path, n: int, n_classes: int, seed: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    npz, png, labels = folder / "npz", folder / "png", class_labels(n, n_classes)
    for d in (npz, png):
        d.mkdir(exist_ok=True)
        if not (d / "train_labels.pkl").exists():
            (d / "train_labels.pkl").write_bytes(pickle.dumps({"labels": labels.tolist()}, protocol=2))
    t = time.perf_counter()
    if not (npz / "train_images.npz").exists():
        write_npz(npz / "train_images.npz", n, seed)
    if not (png / "train_images_png.pkl").exists():
        subprocess.run([sys.executable, __file__, "--write-png", str(png / "train_images_png.pkl"), "--n", str(n),
                        "--seed", str(seed)], check=True)
    return {"npz_bytes": (npz / "train_images.npz").stat().st_size,
            "png_pickle_bytes": (png / "train_images_png.pkl").stat().st_size,
            "decoded_bytes": n * SIZE * SIZE * 3, "write_s": round(time.perf_counter() - t, 1)}


# -- memory ----------------------------------------------------------------------------------------
def status(pid="self") -> dict:
    """VmHWM, VmRSS, RssAnon, RssFile, RssShmem of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) / 1024
    return out


def private_mib(pid) -> float:
    """Private (unshared) resident memory of a process, in MiB (smaps_rollup)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total / 1024


def warm_page_cache(folder: Path) -> None:
    """Read the folder's files once (8 MB at a time: this process's memory does not grow)."""
    for f in sorted(folder.iterdir()):
        with open(f, "rb", buffering=0) as fh:
            while fh.read(8 << 20):
                pass


def children() -> list:
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                out.append(int(entry))
    return sorted(out)


def measure(kind: str, folder: Path, workers: int, batches: int, seed: int) -> dict:
    """Runs in its own process: load, draw ``batches`` training batches, report memory."""
    import torch
    torch.set_num_threads(1)
    from episodes.sampler import EpisodeSampler, epoch_loader
    from episodes.sources import load_source
    from episodes.sources.base import FewShotSource
    base = status()["VmRSS"]
    t = time.perf_counter()
    if kind == "memory":                  # the reference: the npz's images held in memory
        from episodes.sources.tiered import TIERED_MEAN, TIERED_STD
        images = np.load(folder / "npz" / "train_images.npz")["images"]
        labels = pickle.loads((folder / "npz" / "train_labels.pkl").read_bytes())["labels"]
        source = FewShotSource(torch.from_numpy(images).permute(0, 3, 1, 2), labels, "train", "tiered-imagenet",
                               mean=TIERED_MEAN, std=TIERED_STD)
        del images
    else:
        source = load_source("tiered-imagenet", folder / kind, "train")
    load_s = time.perf_counter() - t
    after_load = status()
    sampler = EpisodeSampler(source, WAY, SHOT, QUERY, EPISODES, seed=seed, transform="train")
    if workers:
        it = iter(epoch_loader(sampler, batches, num_workers=workers, persistent_workers=True))
    else:
        it = (sampler.sample(0, i) for i in range(batches))
    t, cpu = time.perf_counter(), time.process_time()
    early, checksum = None, 0.0
    for i, batch in enumerate(it):
        checksum += float(batch.support[:, 0].sum())          # touch the batch
        if i == min(4, batches - 1):
            early = status()["VmRSS"]
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    end = status()
    result = {"kind": kind, "workers": workers, "batches": batches, "episodes": batches * EPISODES,
              "images_per_batch": EPISODES * WAY * (SHOT + QUERY), "load_s": round(load_s, 2),
              "episodes_per_s": round(batches * EPISODES / wall, 1),
              "cpu_s_per_batch": round(cpu / batches, 4) if not workers else None,   # this process only
              "start_rss_mib": round(base, 1),
              "rss_after_load_mib": round(after_load["VmRSS"], 1), "rss_after_5_batches_mib": round(early, 1),
              "rss_end_mib": round(end["VmRSS"], 1), "peak_rss_mib": round(end["VmHWM"], 1),
              "end_anon_mib": round(end["RssAnon"], 1), "end_file_mib": round(end["RssFile"], 1),
              "checksum": round(checksum, 3)}
    if workers:
        kids = children()
        result["workers_peak_rss_mib"] = [round(status(p)["VmHWM"], 1) for p in kids]
        result["workers_private_mib"] = [round(private_mib(p), 1) for p in kids]
        result["main_private_mib"] = round(private_mib("self"), 1)
    return result


def interleaved(folder: Path, batches: int, seed: int, baseline: Path = None) -> dict:
    """CPU time per batch (min, median) of the same batches drawn alternately, in this one
    process, from the npz read from disk and from an in-memory copy of its images (train and
    eval transforms); with ``baseline`` (a folder holding another version's ``episodes``
    package), in-memory miniImageNet-size batches of that version and of this one."""
    import importlib.util
    import statistics

    import torch
    torch.set_num_threads(1)
    from episodes.sampler import EpisodeSampler
    from episodes.sources import load_source
    from episodes.sources.base import FewShotSource

    def timed(samplers: dict, n: int) -> dict:
        times = {k: [] for k in samplers}
        for i in range(n):
            for k, smp in samplers.items():
                c = time.process_time()
                smp.sample(0, i)
                times[k].append(time.process_time() - c)
        return {k: [round(min(v), 4), round(statistics.median(v), 4)] for k, v in times.items()}

    out = {}
    lazy = load_source("tiered-imagenet", folder / "npz", "train")
    images = torch.empty((len(lazy),) + (SIZE, SIZE, 3), dtype=torch.uint8)
    lazy.data.read_into(np.arange(len(lazy)), images.permute(0, 3, 1, 2).numpy())
    memory = FewShotSource(images.permute(0, 3, 1, 2), lazy.labels, "train", "tiered-imagenet", mean=lazy.mean,
                           std=lazy.std)
    del images
    for tr in ("train", "eval"):
        out[f"tiered {tr}: CPU s per 640-image batch (min, median)"] = timed(
            {kind: EpisodeSampler(src, WAY, SHOT, QUERY, EPISODES, seed=seed, transform=tr)
             for kind, src in (("in memory", memory), ("npz from disk", lazy))}, batches)
    if baseline is not None:
        spec = importlib.util.spec_from_file_location("episodes_baseline", baseline / "episodes" / "__init__.py",
                                                      submodule_search_locations=[str(baseline / "episodes")])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["episodes_baseline"] = mod
        spec.loader.exec_module(mod)
        old_sampler = importlib.import_module("episodes_baseline.sampler")
        old_base = importlib.import_module("episodes_baseline.sources.base")
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(64).repeat_interleave(600)
        data = torch.randint(0, 256, (labels.numel(), 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
        old_source = old_base.FewShotSource(data, labels, "train", "m", lazy.mean, lazy.std)
        new_source = FewShotSource(data, labels, "train", "m", lazy.mean, lazy.std)
        samplers = {"baseline": old_sampler.EpisodeSampler(old_source, 5, 15, 6, 8, seed, "train"),
                    "this version": EpisodeSampler(new_source, 5, 15, 6, 8, seed, "train")}
        assert torch.equal(samplers["baseline"].sample(0, 0).support, samplers["this version"].sample(0, 0).support)
        out["in-memory miniImageNet-size: CPU s per 840-image batch (min, median)"] = timed(samplers, 2 * batches)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50000, help="images in the split (default 50000)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batches", type=int, default=50, help="training batches of 8 episodes per run")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--kinds", nargs="+", default=["npz", "png", "memory"], choices=["npz", "png", "memory"])
    p.add_argument("--data", type=Path, default=None, help="folder for the split (default: a temporary one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cold", action="store_true", help="do not read the files into the page cache before each run")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--interleaved", action="store_true",
                   help="instead: CPU time per batch, in memory vs npz from disk, drawn alternately in one process")
    p.add_argument("--baseline", type=Path, default=None,
                   help="with --interleaved: a folder holding another version's episodes/ to time in-memory batches "
                        "against (e.g. git archive COMMIT episodes | tar -x -C DIR)")
    p.add_argument("--write-png", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--measure", nargs=3, metavar=("KIND", "DATA", "WORKERS"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_png is not None:
        write_png_pickle(args.write_png, args.n, args.seed)
        return
    if args.measure is not None:
        kind, folder, workers = args.measure
        print(json.dumps(measure(kind, Path(folder), int(workers), args.batches, args.seed)))
        return
    if args.interleaved:
        if args.data is None or not (args.data / "npz" / "train_images.npz").exists():
            sys.exit("--interleaved needs --data DIR of an earlier run (DIR/npz/train_images.npz)")
        res = interleaved(args.data, args.batches, args.seed, args.baseline)
        print(json.dumps(res, indent=1))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out, json.dumps(res, indent=1) + "\n")
        return
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="tiered-bench-")
        args.data = Path(tmp.name)
    try:
        data = make_data(args.data, args.n, args.classes, args.seed)
        print(f"split of {args.n} images: decoded {data['decoded_bytes'] / 2 ** 20:.0f} MiB, npz "
              f"{data['npz_bytes'] / 2 ** 20:.0f} MiB, PNG pickle {data['png_pickle_bytes'] / 2 ** 20:.0f} MiB "
              f"(written in {data['write_s']} s)", flush=True)
        runs = []
        for kind in args.kinds:
            for w in args.workers:
                if not args.cold:              # the file in the page cache, as from the second epoch on
                    warm_page_cache(args.data / ("png" if kind == "png" else "npz"))
                r = subprocess.run([sys.executable, __file__, "--measure", kind, str(args.data), str(w),
                                    "--batches", str(args.batches), "--seed", str(args.seed)],
                                   capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                if r.returncode:
                    sys.exit(f"{kind} / {w} workers failed:\n{r.stderr[-2000:]}")
                runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[-1]), flush=True)
        decoded = data["decoded_bytes"] / 2 ** 20
        print(f"\n| source | workers | load s | episodes/s | CPU s/batch | RSS after load | after 5 batches | end "
              f"| peak (VmHWM) | workers' peak | workers' private | decoded split |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in runs:
            wp = " + ".join(f"{v:.0f}" for v in r.get("workers_peak_rss_mib", [])) or "-"
            wu = " + ".join(f"{v:.0f}" for v in r.get("workers_private_mib", [])) or "-"
            print(f"| {r['kind']} | {r['workers']} | {r['load_s']} | {r['episodes_per_s']} | "
                  f"{r['cpu_s_per_batch'] if r['cpu_s_per_batch'] is not None else '-'} | "
                  f"{r['rss_after_load_mib']:.0f} | {r['rss_after_5_batches_mib']:.0f} | {r['rss_end_mib']:.0f} | "
                  f"{r['peak_rss_mib']:.0f} | {wp} | {wu} | {decoded:.0f} |")
        sums = {(r["kind"], r["workers"]): r["checksum"] for r in runs}
        same = len(set(sums.values())) <= 1
        print(f"\nevery run drew the same batches (checksum of the support images): {same}")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out, json.dumps({"data": data, "n": args.n, "cold": args.cold, "runs": runs,
                                                    "same_batches": same}, indent=1) + "\n")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
