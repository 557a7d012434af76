"""``metasparse compare``: flags -> :class:`~metasparse.api.CompareConfig` -> :func:`metasparse.api.compare`."""
from __future__ import annotations

import argparse

from ..registry import DATASETS
from .common import add_episode_flags, episode_spec, print_saved_episodes

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    c = sub.add_parser("compare", help="compare checkpoints / heads on identical episodes")
    c.add_argument("checkpoints", nargs="+", help="checkpoints (RUN_DIR/best.pt) of one dataset")
    c.add_argument("--heads", nargs="+", help="evaluate every checkpoint with each of these heads")
    c.add_argument("--lambda-ratios", type=float, nargs="+", help="lambda ratios for the group-sparse-svm head")
    c.add_argument("--out", default="runs/compare", help="output folder (compare.json, compare.md, PNGs)")
    c.add_argument("--force", action="store_true", help="overwrite results already at --out")
    c.add_argument("--feature-cache", default="auto", help="bound of the cache of features embedded once per "
                   "checkpoint: auto (half the free device memory) | off | a size such as 4GB")
    c.add_argument("--dataset", help="compare on this dataset instead of the checkpoints' (" + " | ".join(DATASETS)
                   + "): cross-domain, from --data-root, resized to the checkpoints' input shape and normalised "
                   "with the training dataset's statistics")
    add_episode_flags(c)
    c.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..api import CompareConfig, compare
    result = compare(CompareConfig(
        checkpoints=args.checkpoints, episodes=episode_spec(args), heads=args.heads,
        lambda_ratios=args.lambda_ratios, out=args.out, device=args.device, progress=not args.no_progress,
        force=args.force, feature_cache=args.feature_cache, dataset=args.dataset))
    print_saved_episodes(result.saved_episodes, result.n_episodes, result.way)
    print(result.markdown)
    print("written: " + ", ".join(result.paths.values()))
    return 0
