"""``metasparse train``: flags -> :class:`~metasparse.api.TrainConfig` -> :func:`metasparse.api.train`."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..options import add_flags, flag_values

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="meta-train a backbone + head", description="Meta-train with MetaOptNet's "
                       "protocol (defaults per dataset; see docs/cli.md).")
    t.add_argument("--config", nargs="+", metavar="FILE",
                   help="configuration files (JSON or YAML: option names as keys; a run's config.json works "
                        "too; later files override earlier ones, e.g. configs/cifar-fs.yaml "
                        "configs/heads/svm.yaml); flags given here override them")
    t.add_argument("--print-config", action="store_true",
                   help="print the resolved run configuration (JSON, what config.json will hold) and exit")
    add_flags(t)   # one flag per option of metasparse.options.OPTIONS
    t.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):
    """The :class:`~metasparse.api.TrainConfig` of the flags given (those not given take
    the defaults, or the saved run's), over the ``--config`` files' values."""
    from ..api import TrainConfig
    merged = {}
    if getattr(args, "config", None):
        from ..api.train_config import read_config_file
        for path in args.config:
            merged.update(read_config_file(path))
    merged.update(flag_values(args))
    if merged.get("out") is None:
        raise ConfigError("--out is required (the run directory)")
    return TrainConfig(**merged)


def run(args: argparse.Namespace) -> int:
    from ..api import train
    from ..errors import SolverConvergenceError
    config = config_from_args(args) if not args.print_config or args.out else _printable(args)
    if args.print_config:   # the resolved configuration, checked as a new run would check it
        import json
        from ..api.training import resolved_config
        print(json.dumps(resolved_config(config), indent=1))
        return 0
    try:
        result = train(config)
    except SolverConvergenceError as e:
        raise SolverConvergenceError(f"{e}; {_strict_resume_hint(config.out)}") from None
    best = result.best
    if not result.stopped and best and result.rank == 0 and best.get("val_accuracy") is not None:
        print(f"best validation accuracy {100 * best['val_accuracy']:.2f} +- {100 * best['val_ci95']:.2f}% "
              f"at epoch {best['epoch']}; checkpoints in {config.out}/best.pt and {config.out}/last.pt")
    return 0


def _strict_resume_hint(out: Path) -> str:
    """How to go on after a --strict-solver stop (its step was never saved: last.pt is intact)."""
    if (out / "last.pt").is_file():
        return (f"{out}/last.pt is the last good checkpoint: continue with --resume --no-strict-solver, "
                f"or start a new run with a larger max_iter in --head-options")
    return f"no checkpoint was written yet: delete {out} and start again with a larger max_iter in --head-options"


def _printable(args: argparse.Namespace):
    """The configuration of ``--print-config`` without ``--out`` (a placeholder run directory)."""
    args.out = "RUN_DIR"
    return config_from_args(args)
