"""``metasparse train``: flags -> :class:`~metasparse.api.TrainConfig` -> :func:`metasparse.api.train`."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..registry import BACKBONES, DATASETS, HEADS, SOLVERS
from .common import json_arg

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="meta-train a backbone + head", description="Meta-train with MetaOptNet's "
                       "protocol (defaults per dataset; see docs/cli.md).")
    t.add_argument("--dataset", help=" | ".join(DATASETS) + " (any case; MetaOptNet's miniImageNet, CIFAR_FS, "
                   "FC100 work too)")
    t.add_argument("--data-root", help="folder holding the dataset files (not needed for synthetic)")
    t.add_argument("--source-options", help="JSON keyword arguments of the source (synthetic: n_factors, mixing, ...)")
    t.add_argument("--backbone", help=" | ".join(BACKBONES) + " (default: resnet12; mlp for synthetic)")
    t.add_argument("--backbone-options", help="JSON options of the backbone, e.g. '{\"avg_pool\": true}'")
    t.add_argument("--head", default=None, help=" | ".join(HEADS) + " (default group-sparse-svm)")
    t.add_argument("--lambda-ratio", type=float, help="lambda1 / lambda_max per episode (group-sparse-svm)")
    t.add_argument("--solver", choices=list(SOLVERS), help="SVM solver")
    t.add_argument("--head-options", help="JSON options of the head, e.g. '{\"dual_reg\": 1.0}'")
    t.add_argument("--way", type=int)
    t.add_argument("--train-shot", type=int)
    t.add_argument("--query", type=int, help="query examples per class during training")
    t.add_argument("--episodes-per-batch", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--batches-per-epoch", type=int)
    t.add_argument("--optimizer", choices=["sgd", "adam"])
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--label-smoothing", type=float)
    t.add_argument("--val-episodes", type=int, help="validation episodes per epoch (0: no validation)")
    t.add_argument("--val-shot", type=int)
    t.add_argument("--val-query", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--config", nargs="+", metavar="FILE",
                   help="configuration files (JSON or YAML: option names as keys; a run's config.json works "
                        "too; later files override earlier ones, e.g. configs/cifar-fs.yaml "
                        "configs/heads/svm.yaml); flags given here override them")
    t.add_argument("--print-config", action="store_true",
                   help="print the resolved run configuration (JSON, what config.json will hold) and exit")
    t.add_argument("--out", help="run directory (config.json, metrics.jsonl, last.pt, best.pt); required")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for the backbone (default: on for ResNet-12 / Conv4 trained on CUDA, "
                        "off otherwise; --no-amp turns it off)")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the backbone (one graph for all batch sizes; the first steps compile)")
    t.add_argument("--head-dtype", choices=["float32", "float64"], help="dtype of the features given to the head")
    t.add_argument("--num-workers", type=int, default=0, help="DataLoader workers producing episodes")
    t.add_argument("--augment-device", choices=["auto", "cpu"], default="auto",
                   help="where the training augmentation runs: auto = on the training device when it is CUDA "
                        "(same episodes), cpu = in the episode producer")
    t.add_argument("--checkpoint-every", type=int, help="also save last.pt every N batches (default 200)")
    t.add_argument("--log-every", type=int, help="metrics.jsonl step record every N batches (default 10)")
    t.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard")
    t.add_argument("--strict-solver", action=argparse.BooleanOptionalAction, default=None,
                   help="stop with an error (exit status 1) at the first step where an episode's solver "
                        "stops short of its tolerance, instead of one warning per epoch")
    t.add_argument("--sync-bn", action="store_true", help="with torchrun on GPUs: batch-norm statistics over all ranks")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--stop-after-steps", type=int, help=argparse.SUPPRESS)
    t.set_defaults(run=run)


# flags whose "not given" value is not None: (TrainConfig field, value when not given)
_UNSET = {"resume": False, "device": "auto", "num_workers": 0, "augment_device": "auto", "progress": True,
          "tensorboard": False, "sync_bn": False, "compile": False}


def config_from_args(args: argparse.Namespace):
    """The :class:`~metasparse.api.TrainConfig` of the flags (flags not given stay None:
    defaults, or the saved run's), over the ``--config`` file's values when one is given."""
    from ..api import TrainConfig
    values = _flag_values(args)
    if getattr(args, "config", None):
        from ..api.train_config import read_config_file
        merged = {}
        for path in args.config:
            merged.update(read_config_file(path))
        merged.update({k: v for k, v in values.items() if v is not None and _UNSET.get(k, None) != v})
        if merged.get("out") is None:
            from ..errors import ConfigError
            raise ConfigError("--out is required (the run directory)")
        return TrainConfig(**merged)
    if values["out"] is None:
        from ..errors import ConfigError
        raise ConfigError("--out is required (the run directory)")
    return TrainConfig(**values)


def _flag_values(args: argparse.Namespace) -> dict:
    return dict(
        out=args.out, dataset=args.dataset, data_root=args.data_root,
        source_options=json_arg(args.source_options, "--source-options"), backbone=args.backbone,
        backbone_options=json_arg(args.backbone_options, "--backbone-options"), head=args.head,
        lambda_ratio=args.lambda_ratio, solver=args.solver, head_options=json_arg(args.head_options, "--head-options"),
        way=args.way, train_shot=args.train_shot, query=args.query, episodes_per_batch=args.episodes_per_batch,
        val_episodes=args.val_episodes, val_shot=args.val_shot, val_query=args.val_query, epochs=args.epochs,
        batches_per_epoch=args.batches_per_epoch, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, seed=args.seed,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, amp=args.amp, head_dtype=args.head_dtype,
        strict_solver=args.strict_solver, resume=args.resume, device=args.device, num_workers=args.num_workers,
        augment_device=args.augment_device,
        progress=not args.no_progress, tensorboard=args.tensorboard, sync_bn=args.sync_bn, compile=args.compile,
        stop_after_steps=args.stop_after_steps)


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
