#!/usr/bin/env python
"""Meta-training throughput: episodes per second of one full training step
(ResNet-12 forward on support + query, head solve, backward through the head and the
backbone, SGD step) for the group-sparse SVM head and the vanilla SVM head (our dual
solver and learn2learn's qpth SVClassifier = MetaOptNet's solver), measured in the
same run on random images.

    python scripts/train_throughput.py --device cuda --image-size 84 --shot 15
    python scripts/train_throughput.py --device cpu --image-size 32 --widths 16 32 64 128 --batches 3

Prints one line per head: episodes/s, seconds/batch, features used.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from metasparse.backbones import build_backbone
from metasparse.registry import build_head
from metasparse.engine.checkpoint import atomic_write_text
from metasparse.engine.model import FewShotModel
from metasparse.engine.train import smoothed_cross_entropy

HEADS = [("group-sparse-svm (dual)", "group-sparse-svm", {"lambda_ratio": 0.01}),
         ("svm (dual)", "svm", {"solver": "dual"}),
         ("svm (qpth)", "svm", {"solver": "qpth"}),
         # the dual heads with torch's intra-op thread count inside the solver
         # (cpu_threads=None; the default is 1 thread on CPU, metasparse.solvers.threads)
         ("group-sparse-svm (dual, torch threads)", "group-sparse-svm", {"lambda_ratio": 0.01, "cpu_threads": None}),
         ("svm (dual, torch threads)", "svm", {"solver": "dual", "cpu_threads": None}),
         # near-free head: the step time of the backbone alone, for the heads' share
         ("protonet", "protonet", {})]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--shot", type=int, default=15)
    ap.add_argument("--query", type=int, default=6)
    ap.add_argument("--episodes-per-batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--widths", type=int, nargs=4, default=[64, 160, 320, 640])
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for the backbone")
    ap.add_argument("--heads", nargs="+", default=None, help="subset of: gs-svm svm-dual svm-qpth gs-svm-tt svm-dual-tt "
                    "protonet (-tt: the solver keeps torch's thread count, cpu_threads=None; protonet: "
                    "the backbone-only reference for the heads' share of a step)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    keys = {"gs-svm": 0, "svm-dual": 1, "svm-qpth": 2, "gs-svm-tt": 3, "svm-dual-tt": 4, "protonet": 5}
    bad = [h for h in args.heads or [] if h not in keys]
    if bad:
        ap.error(f"--heads: unknown {bad}, expected some of {sorted(keys)}")
    heads = [HEADS[keys[h]] for h in args.heads] if args.heads else HEADS[:3]
    b, n, k, q, s = args.episodes_per_batch, args.way, args.shot, args.query, args.image_size
    g = torch.Generator().manual_seed(0)
    support = torch.randn(b, n * k, 3, s, s, generator=g).to(device)
    query = torch.randn(b, n * q, 3, s, s, generator=g).to(device)
    ys = torch.arange(n).repeat_interleave(k).expand(b, -1).contiguous().to(device)
    yq = torch.arange(n).repeat_interleave(q).expand(b, -1).contiguous().to(device)
    block = 5 if s >= 64 else 2
    rows = []
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"ResNet-12 {args.widths} at {s}x{s}, {n}-way {k}-shot {q}-query, {b} episodes/batch, amp={args.amp}")
    for label, name, opts in heads:
        torch.manual_seed(0)
        backbone = build_backbone("resnet12", widths=args.widths, dropblock_size=block)
        try:
            head = build_head(name, opts)
        except Exception as e:  # e.g. qpth missing
            print(f"{label:40s} unavailable: {e}")
            continue
        model = FewShotModel(backbone, head, amp=args.amp).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        used = []
        for i in range(args.warmup + args.batches):
            if i == args.warmup:
                sync(device)
                t0 = time.perf_counter()
            logits, fit = model(support, ys, query, n)
            loss = smoothed_cross_entropy(logits, yq, 0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            used.append(float(1 - fit.unused_fraction.float().mean()))
        sync(device)
        dt = (time.perf_counter() - t0) / args.batches
        row = {"head": label, "episodes_per_s": b / dt, "s_per_batch": dt, "features_used": sum(used) / len(used)}
        rows.append(row)
        print(f"{label:40s} {row['episodes_per_s']:8.1f} episodes/s  {dt * 1000:8.1f} ms/batch  "
              f"features used {100 * row['features_used']:.1f}%  threads {torch.get_num_threads()}", flush=True)
    base = next((r["s_per_batch"] for r in rows if r["head"] == "protonet"), None)
    if base is not None:
        # share of a training step spent in the head (solve + its backward), estimated as
        # the step time beyond the near-free ProtoNet head's
        for r in rows:
            if r["head"] != "protonet":
                r["head_share"] = max(0.0, r["s_per_batch"] - base) / r["s_per_batch"]
                print(f"{r['head']:40s} head share of the step {100 * r['head_share']:.1f}%")
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args), "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
