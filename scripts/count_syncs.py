#!/usr/bin/env python
"""Host syncs and ATen calls per head call (forward + backward) and per training step.

On a GPU every ATen call is at least one kernel launch and every host sync stalls the
pipeline; both are properties of the code, so they are counted here on any device
(:mod:`metasparse.profiling`), on the CPU by default, where every machine can track them.

Rows:
  * each head (group-sparse SVM at --lambda-ratio, vanilla SVM, ridge, ProtoNet): one
    forward + backward (cross-entropy on the queries) on a batch of ``--episodes``
    episodes of ResNet-like features (d = 16000 by default, norms in the hundreds: the
    MetaOptNet miniImageNet shape, ResNet-12 at 84x84), 5-way 5- and 15-shot, 6 queries;
  * a full training step (backbone forward on support + query, head, loss, backward,
    SGD step) of ResNet-12 with small widths (the op count of the backbone does not
    depend on its widths) for each head.

    python scripts/count_syncs.py                       # CPU, all rows
    python scripts/count_syncs.py --features resnet12   # features of a random full ResNet-12 (slow on CPU)
    python scripts/count_syncs.py --sites 8 --json runs/count_syncs.json
    python scripts/count_syncs.py --no-step --metaoptnet     # with MetaOptNet's qpth head (needs qpth)

``--sites N`` prints the N places (operator, file:line) with the most syncs per row.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from episodes.atomic import atomic_write_text  # noqa: E402
from metasparse.backbones import build_backbone  # noqa: E402
from metasparse.engine.model import FewShotModel  # noqa: E402
from metasparse.engine.train import smoothed_cross_entropy  # noqa: E402
from metasparse.profiling import count_ops  # noqa: E402
from metasparse.registry import build_head  # noqa: E402


def resnet_like_features(B, m, d, generator, scale=1.0):
    """Non-negative features with a shared mean direction and norms in the hundreds
    (measured on ResNet-12 at 84x84: top eigenvalue of X X^T ~60x the next)."""
    x = torch.relu(torch.randn(B, m, d, generator=generator)) * 0.8
    x = x + torch.relu(torch.randn(B, 1, d, generator=generator)) * 1.2
    return x * scale


def head_batch(args, shot, device):
    if args.features == "resnet12":
        from bench_heads import resnet12_batch
        q, s, ys, yq = resnet12_batch(args.episodes, args.way, shot, args.query, 84, 0, device, torch.float32)
        return q, s, ys, yq
    g = torch.Generator().manual_seed(shot)
    B, n = args.episodes, args.way
    s = resnet_like_features(B, n * shot, args.dim, g).to(device)
    q = resnet_like_features(B, n * args.query, args.dim, g).to(device)
    ys = torch.arange(n).repeat_interleave(shot).expand(B, -1).contiguous().to(device)
    yq = torch.arange(n).repeat_interleave(args.query).expand(B, -1).contiguous().to(device)
    return q, s, ys, yq


HEADS = {"group-sparse-svm": lambda a: {"lambda_ratio": a.lambda_ratio}, "svm": lambda a: {},
         "ridge": lambda a: {}, "protonet": lambda a: {}}


def count_head(name, opts, q, s, ys, yq, way, sites):
    head = build_head(name, opts).to(s.device)
    s = s.clone().requires_grad_(True)
    q = q.clone().requires_grad_(True)
    head(q, s, ys, way)                       # warm-up (lazy caches)
    with count_ops(sites=sites > 0) as c:
        logits = head(q, s, ys, way)
        smoothed_cross_entropy(logits, yq, 0.1).backward()
    return c


def count_metaoptnet(q, s, ys, yq, way, sites):
    """MetaOptNet's own SVM-CS head (qpth's batched interior-point QP, 15 iterations as it
    trains; scripts/head_baselines.py), the reference for the SVM head's cost."""
    from head_baselines import metaoptnet_svm_cs
    s = s.clone().requires_grad_(True)
    q = q.clone().requires_grad_(True)
    metaoptnet_svm_cs(q, s, ys, way)
    with count_ops(sites=sites > 0) as c:
        logits, _ = metaoptnet_svm_cs(q, s, ys, way)
        smoothed_cross_entropy(logits, yq, 0.1).backward()
    return c


def count_step(name, opts, args, shot, device, sites):
    torch.manual_seed(0)
    backbone = build_backbone("resnet12", widths=args.step_widths, dropblock_size=5)
    model = FewShotModel(backbone, build_head(name, opts)).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    B, n, size = args.step_episodes, args.way, args.image_size
    sup = torch.randn(B, n * shot, 3, size, size, generator=g).to(device)
    qry = torch.randn(B, n * args.query, 3, size, size, generator=g).to(device)
    ys = torch.arange(n).repeat_interleave(shot).expand(B, -1).contiguous().to(device)
    yq = torch.arange(n).repeat_interleave(args.query).expand(B, -1).contiguous().to(device)

    def step():
        logits, fit = model(sup, ys, qry, n)
        loss = smoothed_cross_entropy(logits, yq, 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    with count_ops(sites=sites > 0) as c:
        step()
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--features", choices=["synthetic", "resnet12"], default="synthetic")
    ap.add_argument("--dim", type=int, default=16000)
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--shots", type=int, nargs="+", default=[5, 15])
    ap.add_argument("--query", type=int, default=6)
    ap.add_argument("--lambda-ratio", type=float, default=0.01)
    ap.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    ap.add_argument("--no-step", action="store_true", help="skip the training-step rows")
    ap.add_argument("--metaoptnet", action="store_true",
                    help="also count MetaOptNet's own SVM-CS head (qpth, batched), the SVM head's reference")
    ap.add_argument("--step-widths", type=int, nargs=4, default=[8, 8, 8, 8])
    ap.add_argument("--step-episodes", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--sites", type=int, default=0, help="print this many sync sites per row")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)
    rows = []

    def report(kind, name, shot, c):
        row = {"kind": kind, "head": name, "shot": shot, "aten_calls": c.aten_calls, "host_syncs": c.host_syncs}
        if args.sites:
            row["sync_sites"] = {f"{op} @ {site}": k for (op, site), k in c.sync_sites.most_common(args.sites)}
        rows.append(row)
        print(f"{kind:5s} {name:17s} {shot:2d}-shot  aten calls {c.aten_calls:6d}  host syncs {c.host_syncs:4d}",
              flush=True)
        for (op, site), k in c.sync_sites.most_common(args.sites):
            print(f"        {k:4d}  {op}  {site}")

    print(f"device {device}; heads: {args.episodes} episodes, {args.way}-way, {args.query} queries, "
          f"d = {args.dim if args.features == 'synthetic' else 16000} ({args.features}); "
          f"steps: ResNet-12 {args.step_widths} at {args.image_size}x{args.image_size}, {args.step_episodes} episodes")
    for shot in args.shots:
        q, s, ys, yq = head_batch(args, shot, device)
        for name in args.heads:
            report("head", name, shot, count_head(name, HEADS[name](args), q, s, ys, yq, args.way, args.sites))
        if args.metaoptnet:
            if importlib.util.find_spec("qpth") is None:
                print("skipped: MetaOptNet's qpth SVM-CS (qpth is not installed)")
            else:
                report("head", "metaoptnet-qpth", shot, count_metaoptnet(q, s, ys, yq, args.way, args.sites))
    if not args.no_step:
        for shot in args.shots:
            for name in args.heads:
                report("step", name, shot, count_step(name, HEADS[name](args), args, shot, device, args.sites))
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
