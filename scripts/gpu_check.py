#!/usr/bin/env python
"""The prepared GPU check (``scripts/gpu_check.sh``): one CUDA device, at most ~5 minutes.

Needs only torch, torchvision, numpy, scipy, h5py, matplotlib, tqdm and pytest; what needs
learn2learn, cvxpy or qpth is skipped with a line saying so.  Measures, on MetaOptNet's
miniImageNet training shape (ResNet-12 at 84x84, 5-way, 6 queries per class, 8 episodes
per batch):

1. **backbone**: ResNet-12 forward + backward on the support + query images of a batch
   (15- and 5-shot) as ``metasparse train`` runs it on CUDA (bf16 autocast, channels-last,
   cudnn.benchmark), its FLOPs (``torch.utils.flop_counter``) and the fraction of the
   device's dense bf16 peak;
2. **end to end**: ``metasparse train`` through the command line on files in the real
   MetaOptNet pickle format, with the group-sparse SVM, SVM and ProtoNet heads at 15- and
   5-shot: episodes/s over the second epoch (the first one warms up: cudnn autotuning,
   DataLoader workers), the fraction of step time spent waiting for data, and each SVM
   head's share of the step (its step time beyond ProtoNet's, the pipeline without a
   solver);
3. **heads**: forward + backward of the heads alone on d = 16000 features, 8 episodes.

Prints a table and writes ``OUT/gpu_check.json``.  ``--dry-run`` runs every part on the CPU
at toy sizes (seconds) to check the plumbing before spending device time.

    python scripts/gpu_check.py --out runs/gpu_check
    python scripts/gpu_check.py --dry-run --out /tmp/gpu_check_dry
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from episodes.atomic import atomic_write_text  # noqa: E402

#: dense bf16 tensor-core peak (FLOP/s) by device name
BF16_PEAK = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_for(name: str):
    for key, value in BF16_PEAK.items():
        if key in name:
            return value
    return None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup: int, repeats: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def backbone_check(args, device, report):
    """ResNet-12 forward + backward as the training step runs it."""
    from torch.utils.flop_counter import FlopCounterMode
    from metasparse.backbones import build_backbone
    widths = [4, 4, 4, 4] if args.dry_run else [64, 160, 320, 640]
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    net = build_backbone("resnet12", widths=widths, dropblock_size=5).to(device).train()
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    rows = []
    for shot in args.shots:
        m = args.episodes * 5 * (shot + 6)
        x = torch.randn(m, 3, 84, 84, device=device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                out = net(x)
            out.float().sum().backward()

        with FlopCounterMode(display=False) as fc:
            step()
        flops = fc.get_total_flops()
        t = timed(step, device, warmup=1 if args.dry_run else 3, repeats=2 if args.dry_run else 10)
        peak = peak_for(report["device"]) if cuda else None
        row = {"shot": shot, "images": m, "seconds": t, "gflop": flops / 1e9, "tflops": flops / t / 1e12,
               "bf16_peak_fraction": None if peak is None else flops / t / peak}
        rows.append(row)
        frac = "n/a" if row["bf16_peak_fraction"] is None else f"{100 * row['bf16_peak_fraction']:.1f}% of bf16 peak"
        print(f"  backbone {shot:2d}-shot: {m} images fwd+bwd {1000 * t:7.1f} ms, {flops / 1e9 / m:.1f} GFLOP/image, "
              f"{row['tflops']:.1f} TFLOP/s ({frac})", flush=True)
    report["backbone"] = rows


def train_check(args, device, report):
    """``metasparse train`` end to end on MetaOptNet-format miniImageNet pickles."""
    from fixtures_formats import write_metaoptnet_miniimagenet
    data = os.path.join(args.out, "mini-imagenet")
    per_class = 25 if args.dry_run else 120
    if not os.path.exists(os.path.join(data, "miniImageNet_category_split_train_phase_train.pickle")):
        t0 = time.perf_counter()
        write_metaoptnet_miniimagenet(data, classes={"train": 64, "val": 16, "test": 20}, per_class=per_class)
        print(f"  wrote MetaOptNet pickles ({64 * per_class} training images) in {time.perf_counter() - t0:.1f} s")
    measured = 3 if args.dry_run else args.batches
    heads = [("group-sparse-svm", ["--lambda-ratio", "0.01"]), ("svm", []), ("protonet", [])]
    rows = []
    for shot in args.shots:
        for head, extra in heads:
            out = os.path.join(args.out, f"train_{head}_{shot}shot")
            cmd = [sys.executable, "-m", "metasparse", "train", "--dataset", "mini-imagenet", "--data-root", data,
                   "--head", head, *extra, "--train-shot", str(shot), "--epochs", "2",
                   "--episodes-per-batch", str(args.episodes),
                   "--batches-per-epoch", str(measured), "--val-episodes", "0",
                   "--device", str(device), "--num-workers", str(args.num_workers), "--no-progress",
                   "--log-every", "0", "--out", out]
            if args.dry_run:
                cmd += ["--backbone-options", json.dumps({"widths": [4, 4, 4, 4]})]
            if os.path.exists(os.path.join(out, "metrics.jsonl")):
                import shutil
                shutil.rmtree(out)            # this script's run folder from an earlier check
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": ROOT})
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"  train {head} {shot}-shot FAILED (exit {proc.returncode}): "
                      f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}", flush=True)
                rows.append({"head": head, "shot": shot, "failed": True, "stderr": proc.stderr[-2000:]})
                continue
            epochs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))
                      if '"kind": "epoch"' in line]
            e1, e2 = epochs[0], epochs[1]
            dt = e2["elapsed_s"] - e1["elapsed_s"]
            row = {"head": head, "shot": shot, "episodes_per_s": args.episodes * measured / dt, "s_per_batch": dt / measured,
                   "data_wait_fraction": e2.get("data_wait_fraction"), "wall_s": wall,
                   "amp": json.load(open(os.path.join(out, "config.json"))).get("amp")}
            rows.append(row)
            wait = row["data_wait_fraction"]
            print(f"  train {head:17s} {shot:2d}-shot: {row['episodes_per_s']:7.1f} episodes/s "
                  f"({1000 * row['s_per_batch']:6.1f} ms/batch), data wait "
                  f"{'n/a' if wait is None else f'{100 * wait:.1f}%'}, whole run {wall:.0f} s", flush=True)
    for shot in args.shots:
        base = next((r for r in rows if r["head"] == "protonet" and r["shot"] == shot and not r.get("failed")), None)
        for r in rows:
            if r["shot"] == shot and r["head"] != "protonet" and base and not r.get("failed"):
                r["head_share"] = max(0.0, 1.0 - base["s_per_batch"] / r["s_per_batch"])
                print(f"  {r['head']:17s} {shot:2d}-shot: head's share of the step {100 * r['head_share']:.1f}%")
    report["train"] = rows
    report["train_note"] = (f"epoch 2 of 2 ({measured} batches of {args.episodes} episodes, after {measured} warm-up batches); "
                            f"its time includes epoch 1's checkpoint writes")


def heads_check(args, device, report):
    """Forward + backward of the heads alone on ResNet-like features (d = 16000)."""
    from count_syncs import resnet_like_features
    from metasparse.registry import build_head
    from metasparse.engine.train import smoothed_cross_entropy
    d = 300 if args.dry_run else 16000
    rows = []
    for shot in args.shots:
        g = torch.Generator().manual_seed(shot)
        B = args.episodes
        s = resnet_like_features(B, 5 * shot, d, g).to(device)
        q = resnet_like_features(B, 30, d, g).to(device)
        ys = torch.arange(5).repeat_interleave(shot).expand(B, -1).contiguous().to(device)
        yq = torch.arange(5).repeat_interleave(6).expand(B, -1).contiguous().to(device)
        times = {}
        for name, opts in (("group-sparse-svm", {"lambda_ratio": 0.01}), ("svm", {}), ("protonet", {})):
            head = build_head(name, opts).to(device)

            def call():
                sr, qr = s.detach().requires_grad_(True), q.detach().requires_grad_(True)
                smoothed_cross_entropy(head(qr, sr, ys, 5), yq, 0.1).backward()

            times[name] = timed(call, device, warmup=1 if args.dry_run else 3, repeats=3 if args.dry_run else 10)
        row = {"shot": shot, "ms": {k: 1000 * v for k, v in times.items()},
               "gs_over_svm": times["group-sparse-svm"] / times["svm"]}
        rows.append(row)
        print(f"  heads {shot:2d}-shot, d = {d}: " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in times.items())
              + f"; group-sparse / SVM {row['gs_over_svm']:.2f}x", flush=True)
    report["heads"] = rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/gpu_check")
    ap.add_argument("--dry-run", action="store_true", help="every part on the CPU at toy sizes")
    ap.add_argument("--shots", type=int, nargs="+", default=[15, 5])
    ap.add_argument("--batches", type=int, default=40,
                    help="batches per epoch of each training run (epoch 1 warms up, epoch 2 is measured)")
    ap.add_argument("--num-workers", type=int, default=8)
    ap.add_argument("--episodes", type=int, default=8, help="episodes per batch")
    ap.add_argument("--parts", nargs="+", default=["backbone", "train", "heads"],
                    choices=["backbone", "train", "heads"])
    args = ap.parse_args()
    if args.dry_run:
        device = torch.device("cpu")
        args.num_workers = min(args.num_workers, 1)
        args.episodes = 1
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device (use --dry-run to check the script on the CPU)")
        device = torch.device("cuda")
    os.makedirs(args.out, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    report = {"device": name, "torch": torch.__version__, "args": vars(args)}
    print(f"device: {name} | torch {torch.__version__} | bf16 peak "
          f"{peak_for(name) / 1e12 if peak_for(name) else 'unknown'} TFLOP/s", flush=True)
    for module, needs in (("learn2learn", "the qpth SVM baseline (--solver qpth)"),
                          ("cvxpy", "the cvxpylayers reference"), ("qpth", "MetaOptNet's QP solver")):
        if importlib.util.find_spec(module) is None:
            print(f"  skipped: {needs} ({module} is not installed)")
    t_all = time.perf_counter()
    for part, fn in (("backbone", backbone_check), ("train", train_check), ("heads", heads_check)):
        if part in args.parts:
            print(f"== {part}", flush=True)
            t0 = time.perf_counter()
            fn(args, device, report)
            report[f"{part}_wall_s"] = time.perf_counter() - t0
    report["wall_s"] = time.perf_counter() - t_all
    atomic_write_text(os.path.join(args.out, "gpu_check.json"), json.dumps(report, indent=1) + "\n")
    print(f"gpu_check done in {report['wall_s']:.0f} s; {os.path.join(args.out, 'gpu_check.json')}")


if __name__ == "__main__":
    main()
