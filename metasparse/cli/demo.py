"""``metasparse demo``: flags -> :class:`~metasparse.api.DemoConfig` -> :func:`metasparse.api.demo`."""
from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="group-sparse vs vanilla SVM head on the synthetic source (CPU, minutes)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--batches-per-epoch", type=int, default=None)
    d.add_argument("--episodes", type=int, default=None, help="meta-test episodes per shot")
    d.add_argument("--lambda-ratio", type=float, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu")
    d.add_argument("--quick", action="store_true", help="a tiny run (seconds), for tests")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..api import DemoConfig, demo
    demo(DemoConfig(out=args.out, epochs=args.epochs, batches_per_epoch=args.batches_per_epoch,
                    episodes=args.episodes, lambda_ratio=args.lambda_ratio, seed=args.seed, device=args.device,
                    quick=args.quick, progress=not args.no_progress))
    return 0
