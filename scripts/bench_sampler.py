#!/usr/bin/env python
"""Episode sampling throughput: our vectorised sampler vs learn2learn's TaskDataset.

Workload (issue 2): 5-way 15-shot 6-query episodes in batches of 8, 84x84 RGB images held
in memory (a miniImageNet-sized train split of random pixels), MetaOptNet training
augmentation on (random crop pad 8, colour jitter 0.4, horizontal flip, normalisation).

Measured in one run, single process unless stated:

* ``ours``: ``EpisodeSampler(..., transform="train")`` (one gather + batched per-image augmentation);
* ``l2l-pil``: learn2learn ``TaskDataset`` (NWays, KShots(21), LoadData, RemapLabels,
  ConsecutiveLabels) over a ``MetaDataset`` whose items go through learn2learn's own
  "lee2019" miniImageNet augmentation (ToPILImage, RandomCrop(84, 8), ColorJitter(.4,.4,.4),
  RandomHorizontalFlip, ToTensor, Normalize); a batch = 8 tasks;
* ``l2l-v2``: the same TaskDataset with the per-image ``torchvision.transforms.v2`` pipeline;
* ``ours-2workers``: ``episode_loader(..., num_workers=2)``, steady state (first batches skipped);
* ``ours+keep_mem`` / ``l2l-pil+keep_mem``: both again after the opt-in
  ``episodes.sampler.keep_freed_memory()`` (glibc keeps freed pages; no page faults per batch).

Usage::

    .venv/bin/python scripts/bench_sampler.py --batches 20 --out results/bench_sampler.json
    (also writes results/bench_sampler.png)

    # the training pipeline only (BENCHMARKS.md, "Data pipeline (session 5)"):
    .venv/bin/python scripts/bench_sampler.py --pipeline --per-class 2000 --batches 20 --pipeline-workers 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from episodes.atomic import atomic_write, atomic_write_text  # noqa: E402
from episodes.sampler import EpisodeSampler, episode_loader, keep_freed_memory  # noqa: E402
from episodes.sources.base import FewShotSource  # noqa: E402
from episodes.sources.miniimagenet import MINI_IMAGENET_MEAN, MINI_IMAGENET_STD  # noqa: E402
from episodes.transforms import torchvision_train_transform  # noqa: E402

WAY, SHOT, QUERY, BATCH = 5, 15, 6, 8


def make_source(n_classes: int, per_class: int, size: int, seed: int = 0) -> FewShotSource:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (n_classes * per_class, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return FewShotSource(data, labels, "train", "mini-imagenet", MINI_IMAGENET_MEAN, MINI_IMAGENET_STD)


def time_batches(next_batch, n: int, warmup: int = 1, desc: str = ""):
    """(wall seconds, process CPU seconds) per batch, mean over ``n`` timed batches after ``warmup``.

    CPU time is the robust number on a shared machine (other users' load inflates wall time);
    it counts this process only, so it is reported for single-process methods only."""
    from tqdm import tqdm
    for _ in range(warmup):
        next_batch()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in tqdm(range(n), desc=desc, leave=False):
        next_batch()
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


def bench_ours(source, n):
    sampler = EpisodeSampler(source, WAY, SHOT, QUERY, BATCH, seed=0, transform="train")
    counter = iter(range(10 ** 9))
    return time_batches(lambda: sampler.sample(0, next(counter)), n, desc="ours")


def bench_ours_workers(source, n, workers):
    loader = episode_loader(source, WAY, SHOT, QUERY, BATCH, n_batches=n + 4, seed=0, transform="train",
                            num_workers=workers, prefetch_factor=2)
    it = iter(loader)
    for _ in range(4):                       # worker start-up and queue fill
        next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    return (time.perf_counter() - t0) / n, float("nan")


# -- the training data pipeline (session 5): producers, transport, workers ------------------------

def _consume(item, buffers):
    """What the main process does with a delivered batch before the device copy: read every
    byte once (a copy into a reused buffer, as the pin-memory thread's copy into pinned memory)."""
    for x in ([item.images] if hasattr(item, "images") else [item.support, item.query]):
        key = (x.dtype, tuple(x.shape))
        if key not in buffers:
            buffers[key] = torch.empty(x.shape, dtype=x.dtype)
        buffers[key].copy_(x)


def bench_pipeline(source, n, workers_list, epochs_fork: int = 2):
    """Per-batch wall / main-process CPU time of each way of producing training batches.

    * ``cpu-aug``: ``sampler.sample`` in this process (float32 output, augmentation on the CPU);
    * ``deferred``: ``sampler.sample_deferred`` in this process: what stays on the host when the
      augmentation runs on the device (episode draw, uint8 gather, parameter draw);
    * ``*-Nw``: the same items from N persistent DataLoader workers (keys ``(epoch, i)``), each
      delivered batch read once in the main process (the pin-memory copy's work);
    * ``augment-vectorised-cpu``: the device code path's arithmetic run on the CPU (informative only);
    * ``new-loader-first-batch`` / ``persistent-first-batch``: time to the first batch of an
      epoch with a DataLoader created per epoch (before) vs the persistent one (after)."""
    from torch.utils.data import DataLoader
    from episodes.sampler import EpisodeDataset, EpochKeys, epoch_loader
    sampler = EpisodeSampler(source, WAY, SHOT, QUERY, BATCH, seed=0, transform="train")
    rows = {}
    counter = iter(range(10 ** 9))
    buffers = {}
    rows["cpu-aug-0w"] = time_batches(lambda: _consume(sampler.sample(0, next(counter)), buffers), n, desc="cpu-aug")
    rows["deferred-0w"] = time_batches(lambda: _consume(sampler.sample_deferred(0, next(counter)), buffers), n,
                                       desc="deferred")
    raw = sampler.sample_deferred(0, 0)
    t = sampler.transform
    rows["augment-vectorised-cpu"] = time_batches(lambda: t.augment(raw.images, raw.params), max(3, n // 4),
                                                  desc="vectorised")
    for w in workers_list:
        for deferred in (False, True):
            keys = EpochKeys(n + 4 * w + 4)
            loader = DataLoader(EpisodeDataset(sampler, keys.n_batches, deferred=deferred), batch_size=None,
                                sampler=keys, num_workers=w, collate_fn=_identity, persistent_workers=True,
                                prefetch_factor=2)
            it = iter(loader)
            for _ in range(4 * w + 4):              # start-up and queue fill
                _consume(next(it), buffers)
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                _consume(next(it), buffers)
            name = f"{'deferred' if deferred else 'cpu-aug'}-{w}w"
            rows[name] = ((time.perf_counter() - w0) / n, (time.process_time() - c0) / n)
            del it, loader
            if not deferred:                        # time to an epoch's first batch: new loader vs persistent
                small = EpochKeys(3)
                persistent = DataLoader(EpisodeDataset(sampler, 3), batch_size=None, sampler=small, num_workers=w,
                                        collate_fn=_identity, persistent_workers=True, prefetch_factor=2)
                firsts_new, firsts_persistent = [], []
                for e in range(epochs_fork + 1):
                    t0 = time.perf_counter()
                    for j, b in enumerate(epoch_loader(sampler, 3, e, num_workers=w)):   # a loader per epoch
                        if j == 0:
                            firsts_new.append(time.perf_counter() - t0)
                    small.set_epoch(e)
                    t0 = time.perf_counter()
                    for j, b in enumerate(persistent):                                   # whole epochs
                        if j == 0:
                            firsts_persistent.append(time.perf_counter() - t0)
                firsts_persistent = firsts_persistent[1:]                 # epoch 0 starts the workers
                rows[f"new-loader-first-batch-{w}w"] = (sum(firsts_new) / len(firsts_new), float("nan"))
                rows[f"persistent-first-batch-{w}w"] = (sum(firsts_persistent) / len(firsts_persistent),
                                                        float("nan"))
                del persistent
    return rows


def _identity(x):
    return x


def _l2l_taskset(source, item_transform):
    import learn2learn as l2l
    from learn2learn.data.transforms import ConsecutiveLabels, KShots, LoadData, NWays, RemapLabels
    from episodes.interop import to_meta_dataset
    meta = to_meta_dataset(source, transform=item_transform)
    return l2l.data.TaskDataset(meta, [NWays(meta, WAY), KShots(meta, SHOT + QUERY), LoadData(meta),
                                       RemapLabels(meta), ConsecutiveLabels(meta)], num_tasks=-1)


def lee2019_transform():
    """learn2learn's own miniImageNet 'lee2019' augmentation (PIL based)."""
    from torchvision.transforms import (ColorJitter, Compose, Normalize, RandomCrop, RandomHorizontalFlip,
                                        ToPILImage, ToTensor)
    return Compose([ToPILImage(), RandomCrop(84, padding=8),
                    ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4), RandomHorizontalFlip(),
                    ToTensor(), Normalize(MINI_IMAGENET_MEAN, MINI_IMAGENET_STD)])


def bench_l2l(source, n, item_transform, desc):
    ts = _l2l_taskset(source, item_transform)

    def batch():
        tasks = [ts.sample() for _ in range(BATCH)]
        return torch.stack([x for x, _ in tasks]), torch.stack([y for _, y in tasks])
    return time_batches(batch, n, desc=desc)


def plot(rows, path: str, title: str) -> None:
    """Bar chart of episodes per second (wall clock and per CPU second), written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["method"] for r in rows]
    wall = [r["episodes_per_s"] for r in rows]
    cpu = [r["episodes_per_cpu_s"] or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], wall, width=0.4, label="episodes / wall s")
    ax.bar([x + 0.2 for x in xs], cpu, width=0.4, label="episodes / CPU s (this process)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel("episodes per second")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=20, help="timed batches per method (ours)")
    ap.add_argument("--l2l-batches", type=int, default=5, help="timed batches per learn2learn variant")
    ap.add_argument("--classes", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=600)
    ap.add_argument("--size", type=int, default=84)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads in the main process")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-l2l-v2", action="store_true")
    ap.add_argument("--skip-malloc", action="store_true", help="skip the keep_freed_memory() re-runs")
    ap.add_argument("--out", default=None, help="write results as JSON (atomically)")
    ap.add_argument("--pipeline", action="store_true",
                    help="only the training data pipeline: CPU vs deferred (device) augmentation, in process and "
                         "with persistent workers (--pipeline-workers), epoch start-up")
    ap.add_argument("--pipeline-workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    source = make_source(args.classes, args.per_class, args.size)
    if args.pipeline:
        return pipeline_main(args, source)
    res = {}
    res["ours"] = bench_ours(source, args.batches)
    res["l2l-pil"] = bench_l2l(source, args.l2l_batches, lee2019_transform(), "l2l-pil")
    if not args.skip_l2l_v2:
        res["l2l-v2"] = bench_l2l(source, args.l2l_batches, torchvision_train_transform("mini-imagenet"), "l2l-v2")
    res[f"ours-{args.workers}workers"] = bench_ours_workers(source, args.batches, args.workers)
    if not args.skip_malloc and keep_freed_memory():       # opt-in page reuse, then both again
        res["ours+keep_mem"] = bench_ours(source, args.batches)
        res["l2l-pil+keep_mem"] = bench_l2l(source, args.l2l_batches, lee2019_transform(), "l2l-pil")
    rows = []
    for k, (wall, cpu) in res.items():
        rows.append({"method": k, "wall_s_per_batch": wall, "cpu_s_per_batch": cpu, "batches_per_s": 1 / wall,
                     "episodes_per_s": BATCH / wall, "episodes_per_cpu_s": BATCH / cpu if cpu == cpu else None})

    def ratio(a, b):
        return {"wall": res[a][0] / res[b][0], "cpu": res[a][1] / res[b][1]}
    speedups = {"vs_l2l_pil": ratio("l2l-pil", "ours")}
    if "l2l-v2" in res:
        speedups["vs_l2l_v2"] = ratio("l2l-v2", "ours")
    if "ours+keep_mem" in res:
        speedups["vs_l2l_pil_keep_mem"] = ratio("l2l-pil+keep_mem", "ours+keep_mem")
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    info = {"workload": f"{WAY}-way {SHOT}-shot {QUERY}-query, {BATCH} episodes/batch, "
                        f"{args.size}x{args.size}, train augmentation",
            "source": f"{args.classes} classes x {args.per_class} images in memory",
            "threads": args.threads, "workers": args.workers, "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "loadavg": load,
            "rows": rows, "speedups": speedups}
    print(f"{'method':<18}{'wall s/batch':>13}{'cpu s/batch':>12}{'batches/s':>11}{'episodes/s':>12}")
    for r in rows:
        print(f"{r['method']:<18}{r['wall_s_per_batch']:>13.4f}{r['cpu_s_per_batch']:>12.4f}"
              f"{r['batches_per_s']:>11.2f}{r['episodes_per_s']:>12.1f}")
    for k, v in speedups.items():
        print(f"speed-up ours {k}: {v['wall']:.1f}x wall, {v['cpu']:.1f}x CPU time")
    print(f"load average during the run: {load}")
    if args.out:
        d = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(d, exist_ok=True)
        plot(rows, os.path.splitext(args.out)[0] + ".png", info["workload"])
        atomic_write_text(args.out, json.dumps(info, indent=2))
    return info


def pipeline_main(args, source):
    rows = bench_pipeline(source, args.batches, args.pipeline_workers)
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    info = {"workload": f"{WAY}-way {SHOT}-shot {QUERY}-query, {BATCH} episodes/batch, {args.size}x{args.size}",
            "source": f"{args.classes} classes x {args.per_class} images in memory", "threads": args.threads,
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "loadavg": load, "rows": [{"method": k, "wall_s_per_batch": w, "main_cpu_s_per_batch": c}
                                      for k, (w, c) in rows.items()]}
    print(f"{'method':<30}{'wall ms/batch':>14}{'main-process CPU ms/batch':>27}{'episodes/s':>12}")
    for k, (w, c) in rows.items():
        print(f"{k:<30}{1e3 * w:>14.1f}{1e3 * c:>27.1f}{BATCH / w:>12.1f}")
    print(f"load average during the run: {load}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_text(args.out, json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()
