"""``metasparse evaluate``: flags -> :class:`~metasparse.api.EvalConfig` -> :func:`metasparse.api.evaluate`."""
from __future__ import annotations

import argparse

from ..registry import DATASETS, HEADS, SOLVERS
from .common import add_episode_flags, episode_spec, json_arg, print_saved_episodes

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="meta-test a checkpoint (accuracy +- 95%% CI, feature usage)")
    e.add_argument("--checkpoint", required=True, help="RUN_DIR/best.pt (or a run directory)")
    e.add_argument("--head", help="swap the head at test time (" + " | ".join(HEADS) + ")")
    e.add_argument("--lambda-ratio", type=float, help="lambda1 / lambda_max of the group-sparse-svm head")
    e.add_argument("--solver", choices=list(SOLVERS))
    e.add_argument("--head-options", help="JSON options of the (swapped) head")
    e.add_argument("--out", help="results JSON (default: next to the checkpoint, named after what was "
                   "evaluated: eval_{checkpoint}_{head}[_r{lambda}]_{split}_{shots}shot_seed{seed}[_{hash}].json)")
    e.add_argument("--force", action="store_true", help="overwrite results already at --out")
    e.add_argument("--check-flags", action="store_true",
                   help="check the flags (and make the configuration) without evaluating, for scripts")
    e.add_argument("--dataset", help="evaluate on this dataset instead of the checkpoint's (" + " | ".join(DATASETS)
                   + "): cross-domain, from --data-root, resized to the checkpoint's input shape and normalised "
                   "with the training dataset's statistics")
    add_episode_flags(e)
    e.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..api import EvalConfig, evaluate
    from ..api.report import text_table
    config = EvalConfig(
        checkpoint=args.checkpoint, episodes=episode_spec(args), head=args.head, lambda_ratio=args.lambda_ratio,
        solver=args.solver, head_options=json_arg(args.head_options, "--head-options"), out=args.out,
        device=args.device, progress=not args.no_progress, force=args.force, dataset=args.dataset)
    if args.check_flags:
        return 0
    result = evaluate(config)
    print_saved_episodes(result.saved_episodes, result.n_episodes, result.way)
    rows = [[f"{result.way}-way {k}-shot", r["episodes"], f"{100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f}",
             f"{100 * r['features_used_fraction']:.1f}", f"{r['features_used_mean']:.0f} / {r['n_features']}"]
            for k, r in result.results.items()]
    if result.cross_domain:
        print(result.cross_domain.describe())
    print(f"{result.checkpoint} | head {result.head} {result.head_options} | {result.dataset} {result.split}"
          + (f" | {result.cross_domain.label}" if result.cross_domain else ""))
    print(text_table(rows, ["task", "episodes", "accuracy (%)", "features used (%)", "features used (mean)"]))
    print(f"results written to {result.out}")
    return 0
