"""Embed once, compare many: the time of a lambda sweep with and without the feature cache.

One checkpoint-sized model (ResNet-12, MetaOptNet's widths, eval mode) and the group-sparse
SVM head at several ``lambda_ratio`` (default 6) on the same fixed meta-test episodes
(5-way, 1- and 5-shot, 15 queries per class), evaluated twice in the same process:

* before: ``compare_entries(..., feature_cache=0)``: every entry embeds every episode again
  (what ``metasparse compare`` did before the cache: one backbone pass per lambda);
* after: ``compare_entries(...)`` (default bound): one backbone pass, then every lambda on
  the cached features.

The results of the two must be identical (checked). The images are random uint8 arrays
of the CIFAR-FS / miniImageNet shape (no dataset needed); the backbone has random weights,
so the time of a pass, not the accuracy, is what this measures (the head's solve time on
trained features differs).

    python scripts/bench_feature_cache.py [--episodes 40] [--image-size 32] [--device cpu]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from episodes.fixed import sample_fixed_episodes  # noqa: E402
from episodes.sources.base import FewShotSource  # noqa: E402
from metasparse.backbones import build_backbone  # noqa: E402
from metasparse.engine.compare import Entry, compare_entries  # noqa: E402
from metasparse.engine.distributed import resolve_device  # noqa: E402
from metasparse.engine.model import FewShotModel  # noqa: E402
from metasparse.engine.streams import FixedStream  # noqa: E402
from metasparse.heads import GroupSparseSVMHead  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=40, help="episodes per shot")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--image-size", type=int, default=32, help="32 (CIFAR-FS / FC100) or 84 (miniImageNet)")
    p.add_argument("--lambda-ratios", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    s = args.image_size
    g = torch.Generator().manual_seed(0)
    n_classes, per_class = 20, 40
    data = torch.randint(0, 256, (n_classes * per_class, 3, s, s), dtype=torch.uint8, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    source = FewShotSource(data, labels, "test", "random-images", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    streams = {k: FixedStream(sample_fixed_episodes(source, 5, k, 15, args.episodes, seed=7919 * k), source,
                              args.batch_size) for k in args.shots}
    torch.manual_seed(0)
    backbone = build_backbone("resnet12", dropblock_size=5 if s == 84 else 2, drop_rate=0.1, avg_pool=False)
    model = FewShotModel(backbone, GroupSparseSVMHead()).to(device).eval()
    entries = [Entry(f"r={r:g}", model, GroupSparseSVMHead(lambda_ratio=r).to(device)) for r in args.lambda_ratios]

    def timed(**kw):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        res = compare_entries(entries, streams, device, progress=False, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, res

    t_embed = time.perf_counter()   # one backbone pass over the episodes, for reference
    with torch.no_grad():
        for stream in streams.values():
            for b in stream:
                b = b.to(device)
                model.embed(b.support), model.embed(b.query)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_embed = time.perf_counter() - t_embed
    t_before, before = timed(feature_cache=0)
    t_after, after = timed()
    assert before["shots"] == after["shots"], "the cached comparison differs from the uncached one"
    cache = after["feature_cache"]
    where = {k: (v[0] or {}).get("where") for k, v in cache.items()}
    mb = sum((v[0] or {}).get("bytes", 0) for v in cache.values()) / 1e6
    d = model.backbone.output_dim(s)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, device {device}, "
          f"torch {torch.__version__}")
    print(f"# ResNet-12 ({d} features at {s}x{s}), 5-way {'/'.join(map(str, args.shots))}-shot, 15 queries, "
          f"{args.episodes} episodes per shot, {len(entries)} lambda ratios {args.lambda_ratios}")
    print(f"# feature cache: {mb:.1f} MB on {where}; results identical with and without the cache: yes")
    print("| one backbone pass (s) | before: embed per lambda (s) | after: embed once (s) | speed-up |")
    print("|---|---|---|---|")
    print(f"| {t_embed:.1f} | {t_before:.1f} | {t_after:.1f} | {t_before / t_after:.2f}x |")


if __name__ == "__main__":
    main()
