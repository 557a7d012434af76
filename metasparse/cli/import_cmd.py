"""``metasparse import``: flags -> :class:`~metasparse.api.importing.ImportConfig` ->
:func:`metasparse.api.importing.import_checkpoint`."""
from __future__ import annotations

import argparse

from ..registry import DATASETS, HEADS
from .common import json_arg

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="convert a MetaOptNet / learn2learn ResNet-12 into a metasparse checkpoint",
                       description="Convert a trained ResNet-12 (MetaOptNet's .pth, learn2learn's state dict) into "
                                   "a metasparse checkpoint that evaluate / compare read (docs/cli.md).")
    p.add_argument("src", help="MetaOptNet best_model.pth ({'embedding', 'head'}) or a learn2learn ResNet12 state dict")
    p.add_argument("--from", dest="from_format", required=True, choices=["metaoptnet", "learn2learn"])
    p.add_argument("--dataset", required=True, help=" | ".join(d for d in DATASETS if d != "synthetic")
                   + " (any case: miniImageNet, CIFAR_FS, FC100)")
    p.add_argument("--data-root", help="dataset folder evaluate / compare use by default")
    p.add_argument("--out", required=True, help="the metasparse checkpoint to write (DST.pt)")
    p.add_argument("--head", default="svm", help=" | ".join(HEADS) + " (default svm; evaluate --head swaps it)")
    p.add_argument("--head-options", help="JSON options of the head")
    p.add_argument("--backbone-options", help="JSON, e.g. '{\"avg_pool\": true}' for a 640-d learn2learn backbone")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..api.importing import ImportConfig, import_checkpoint
    res = import_checkpoint(ImportConfig(
        src=args.src, from_format=args.from_format, dataset=args.dataset, out=args.out, data_root=args.data_root,
        head=args.head, head_options=json_arg(args.head_options, "--head-options"),
        backbone_options=json_arg(args.backbone_options, "--backbone-options"), force=args.force))
    cfg = res.config
    widths = cfg["backbone_options"]["widths"]
    print(f"imported {args.src} ({args.from_format}): ResNet-12 widths {widths}, {res.n_features} features on "
          f"{cfg['dataset']} {cfg['example_shape'][1]}x{cfg['example_shape'][2]} images, head {cfg['head']} "
          f"{cfg['head_options']}" + (f", logit scale {res.scale:.4g}" if res.scale is not None else "")
          + (f"; ignored {len(res.ignored)} classifier keys" if res.ignored else ""))
    print(f"written {res.out}: metasparse evaluate --checkpoint {res.out}  |  metasparse compare {res.out} ...")
    return 0
