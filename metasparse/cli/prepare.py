"""``metasparse prepare``: flags -> :class:`~metasparse.api.PrepareConfig` -> :func:`metasparse.api.prepare`."""
from __future__ import annotations

import argparse

from ..registry import DATASETS

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="build CIFAR-FS / FC100 from cifar-100-python.tar.gz")
    p.add_argument("dataset", help=" | ".join(d.name for d in DATASETS.values() if d.from_cifar100)
                   + " (any case: CIFAR_FS, FC100 work too)")
    p.add_argument("--cifar100", required=True, help="path to the official cifar-100-python.tar.gz")
    p.add_argument("--out", required=True, help="output folder for the MetaOptNet-format pickles")
    p.add_argument("--force", action="store_true", help="replace the dataset's files already in --out")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..api import PrepareConfig, prepare
    written = prepare(PrepareConfig(dataset=args.dataset, cifar100=args.cifar100, out=args.out, force=args.force))
    for split, path in written.items():
        print(f"{args.dataset} {split}: {path}")
    return 0
