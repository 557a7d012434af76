"""Command line: ``metasparse train | evaluate | compare | prepare | demo``.

The CLI only parses flags and builds the three things the engine takes: a backbone, a
head and episode streams (see ``docs/cli.md`` for every command with example output).
Errors in user input (missing files, contradictory flags, a checkpoint that does not
fit) end with one line ``metasparse <command>: error: ...`` and exit status 2; a training
step whose inner solver stopped short of its tolerance under ``--strict-solver`` ends
with such a line and exit status 1 (the run's ``last.pt`` stays resumable).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .engine.checkpoint import atomic_write_text, load_checkpoint
from .engine.config import DATASETS, HEADS, TrainSettings, dataset_defaults
from .heads.base import SolverConvergenceError

__all__ = ["main", "build_parser"]

HEAD_ALIASES = {"group-sparse-svm": "group-sparse-svm", "gs-svm": "group-sparse-svm", "svm": "svm",
                "svm-cs": "svm", "ridge": "ridge", "rr": "ridge", "protonet": "protonet"}
SPARSE_HEADS = ("group-sparse-svm",)


class CLIError(ValueError):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- helpers
def _json_arg(text: Optional[str], flag: str) -> Dict[str, Any]:
    if text is None:
        return {}
    try:
        val = json.loads(text)
    except json.JSONDecodeError as e:
        raise CLIError(f"{flag}: expected a JSON object such as '{{\"key\": 1}}', got {text!r} ({e.msg})") from None
    if not isinstance(val, dict):
        raise CLIError(f"{flag}: expected a JSON object, got {text!r}")
    return val


def _head_name(name: str) -> str:
    key = name.lower().replace("_", "-")
    if key not in HEAD_ALIASES:
        raise CLIError(f"--head {name!r}: expected one of {list(HEADS)}")
    return HEAD_ALIASES[key]


def _head_options(head: str, lambda_ratio, solver, extra: Dict[str, Any]) -> Dict[str, Any]:
    opts: Dict[str, Any] = {}
    if lambda_ratio is not None:
        if head not in SPARSE_HEADS:
            raise CLIError(f"--lambda-ratio applies to the group-sparse-svm head only, not --head {head}")
        if lambda_ratio < 0:
            raise CLIError(f"--lambda-ratio must be >= 0, got {lambda_ratio}")
        opts["lambda_ratio"] = float(lambda_ratio)
    if solver is not None:
        if head not in ("group-sparse-svm", "svm"):
            raise CLIError(f"--solver applies to the SVM heads only, not --head {head}")
        if head == "group-sparse-svm" and solver == "qpth":
            raise CLIError("--solver qpth solves the vanilla SVM (lambda1 = 0) only; use --head svm")
        opts["solver"] = solver
    opts.update(extra)
    return opts


def build_head(name: str, options: Dict[str, Any]):
    from .heads import build_head as _build
    try:
        return _build(name, **options)
    except TypeError as e:
        raise CLIError(f"head {name!r}: bad options {options}: {e}") from None


def _load_source(dataset: str, data_root, split: str, source_options: Dict[str, Any]):
    from episodes.sources import load_source
    if dataset != "synthetic" and not data_root:
        raise CLIError(f"--data-root is required for --dataset {dataset}")
    return load_source(dataset, data_root, split, **source_options)


def _example_shape(source) -> List[int]:
    return [int(s) for s in source.data.shape[1:]]


def _backbone_options(name: str, options: Dict[str, Any], example_shape: Sequence[int]) -> Dict[str, Any]:
    """Fill the options the data determines (input channels / dimension)."""
    opts = dict(options)
    if name == "mlp":
        if len(example_shape) != 1:
            raise CLIError(f"--backbone mlp needs vector data, the data has examples of shape {tuple(example_shape)}")
        opts.setdefault("in_dim", int(example_shape[0]))
        opts.setdefault("out_dim", int(example_shape[0]))
    else:
        if len(example_shape) != 3:
            raise CLIError(f"--backbone {name} needs images, the data has vectors of shape {tuple(example_shape)}; "
                           f"use --backbone mlp")
        opts.setdefault("in_channels", int(example_shape[0]))
        if name == "conv4":
            for k in ("dropblock_size", "drop_rate"):
                opts.pop(k, None)
    return opts


def build_model(config: Dict[str, Any], head=None):
    from .backbones import build_backbone
    from .engine.model import FewShotModel
    try:
        backbone = build_backbone(config["backbone"], **config["backbone_options"])
    except ValueError as e:
        raise CLIError(str(e)) from None
    head = head if head is not None else build_head(config["head"], config["head_options"])
    dtype = {"float32": torch.float32, "float64": torch.float64}[config.get("head_dtype", "float32")]
    return FewShotModel(backbone, head, amp=bool(config.get("amp", False)), head_dtype=dtype)


def _load_model(ck: Dict[str, Any]):
    config = ck["config"]
    model = build_model(config)
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise CLIError(f"{ck['path']}: the weights do not fit backbone {config['backbone']} "
                       f"{config['backbone_options']} + head {config['head']}: {' '.join(lines[1:3])[:300]}") from None
    return model


def _device(name: str) -> torch.device:
    from .engine.distributed import resolve_device
    return resolve_device(name)


def _print_table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*[str(c) for c in r]) for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


# ----------------------------------------------------------------------------- train
_TRAIN_KEYS = {  # flag dest -> config key (None: settings key)
    "dataset": "dataset", "data_root": "data_root", "backbone": "backbone", "head": "head",
    "way": "way", "train_shot": "train_shot", "query": "query", "episodes_per_batch": "episodes_per_batch",
    "val_episodes": "val_episodes", "val_shot": "val_shot", "val_query": "val_query",
    "amp": "amp", "head_dtype": "head_dtype",
}
_SETTINGS_KEYS = ("epochs", "batches_per_epoch", "optimizer", "lr", "weight_decay", "label_smoothing", "seed",
                  "checkpoint_every", "log_every")

def _given(value, default):
    """The flag's value when it was given (0 included, so that it is rejected), else the default."""
    return default if value is None else value


def resolve_train_config(args) -> Dict[str, Any]:
    """Dataset defaults overridden by the flags that were given."""
    d = dataset_defaults(args.dataset)
    head = _head_name(args.head or "group-sparse-svm")
    cfg: Dict[str, Any] = {
        "dataset": args.dataset, "data_root": str(args.data_root) if args.data_root else None,
        "source_options": _json_arg(args.source_options, "--source-options"),
        "backbone": (args.backbone or d["backbone"]).lower().replace("-", ""),
        "head": head,
        "head_options": _head_options(head, args.lambda_ratio, args.solver,
                                      _json_arg(args.head_options, "--head-options")),
        "way": _given(args.way, d["way"]), "train_shot": _given(args.train_shot, d["train_shot"]),
        "query": _given(args.query, d["query"]),
        "episodes_per_batch": _given(args.episodes_per_batch, d["episodes_per_batch"]),
        "val_episodes": d["val_episodes"] if args.val_episodes is None else args.val_episodes,
        "val_shot": _given(args.val_shot, d["val_shot"]), "val_query": _given(args.val_query, d["val_query"]),
        "test_query": d["test_query"], "test_episodes": d["test_episodes"],
        "amp": bool(args.amp), "head_dtype": args.head_dtype or "float32",
    }
    if cfg["backbone"] not in ("resnet12", "conv4", "mlp"):
        raise CLIError(f"--backbone {args.backbone!r}: expected resnet12, conv4 or mlp")
    bopts = d["backbone_options"] if cfg["backbone"] == d["backbone"] else {}
    bopts = {**bopts, **_json_arg(args.backbone_options, "--backbone-options")}
    cfg["backbone_options"] = bopts
    s = TrainSettings(epochs=d["epochs"], batches_per_epoch=d["batches_per_epoch"], optimizer=d["optimizer"],
                      lr=d["lr"], weight_decay=d["weight_decay"], label_smoothing=d["label_smoothing"])
    for k in _SETTINGS_KEYS:
        v = getattr(args, k, None)
        if v is not None:
            setattr(s, k, v)
    s.strict_solver = bool(getattr(args, "strict_solver", None))
    for k in ("way", "train_shot", "query", "episodes_per_batch", "val_shot", "val_query"):
        if int(cfg[k]) < 1:
            raise CLIError(f"--{k.replace('_', '-')} must be >= 1, got {cfg[k]}")
    if s.epochs < 1 or s.batches_per_epoch < 1:
        raise CLIError("--epochs and --batches-per-epoch must be >= 1")
    if cfg["val_episodes"] < 0:
        raise CLIError(f"--val-episodes must be >= 0, got {cfg['val_episodes']}")
    if not 0 <= s.label_smoothing < 1:
        raise CLIError(f"--label-smoothing must be in [0, 1), got {s.label_smoothing}")
    cfg["settings"] = s.to_dict()
    cfg["val_seed"] = int(s.seed) + 1_000_003
    return cfg


def _check_resume_flags(args, saved: Dict[str, Any]) -> None:
    """Flags given with --resume must agree with the saved run configuration."""
    for dest, key in _TRAIN_KEYS.items():
        v = getattr(args, dest, None)
        if v is None or v is False:
            continue
        if dest == "head":
            v = _head_name(v)
        if dest == "data_root":
            continue  # data may have moved
        if dest == "backbone":
            v = v.lower().replace("-", "")
        if saved.get(key) != v:
            raise CLIError(f"--{dest.replace('_', '-')} {v} contradicts the run being resumed "
                           f"({key}={saved.get(key)!r}); drop the flag or start a new --out")
    for k in _SETTINGS_KEYS:
        v = getattr(args, k, None)
        if v is not None and saved["settings"].get(k) != v:
            raise CLIError(f"--{k.replace('_', '-')} {v} contradicts the run being resumed "
                           f"({k}={saved['settings'].get(k)!r}); drop the flag or start a new --out")
    for flag, dest in (("--lambda-ratio", "lambda_ratio"), ("--solver", "solver"),
                       ("--backbone-options", "backbone_options"), ("--head-options", "head_options"),
                       ("--source-options", "source_options")):
        if getattr(args, dest, None) is not None:
            raise CLIError(f"{flag} cannot be changed when resuming; the run's config.json holds it")


def run_training(config: Dict[str, Any], out: Path, *, device: str = "auto", resume: bool = False,
                 num_workers: int = 0, progress: bool = True, tensorboard: bool = False,
                 stop_after_steps: Optional[int] = None, sync_bn: bool = False) -> Dict[str, Any]:
    """Build sources, samplers and the model from ``config`` and run the training engine."""
    from episodes.sampler import EpisodeSampler

    from .engine.distributed import cleanup, init_distributed
    from .engine.streams import EvalEpisodes, SamplerStream
    from .engine.train import train

    ctx = init_distributed(device)
    try:
        if config["episodes_per_batch"] % ctx.world_size:
            raise CLIError(f"--episodes-per-batch {config['episodes_per_batch']} is not divisible by the "
                           f"{ctx.world_size} processes")
        s = TrainSettings(**config["settings"])
        src_opts = config.get("source_options", {})
        train_src = _load_source(config["dataset"], config["data_root"], "train", src_opts)
        shape = _example_shape(train_src)
        if "example_shape" in config and list(config["example_shape"]) != shape:
            raise CLIError(f"the data under {config['data_root']} has examples of shape {tuple(shape)}, the run was "
                           f"started on {tuple(config['example_shape'])}")
        config["example_shape"] = shape
        config["backbone_options"] = _backbone_options(config["backbone"], config["backbone_options"], shape)
        torch.manual_seed(s.seed)   # same seed, same initial weights (on every rank)
        model = build_model(config)
        config["n_features"] = int(model.backbone.output_dim(shape[-1]) if len(shape) == 3
                                   else model.backbone.output_dim())
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if not resume:
                atomic_write_text(out / "config.json", json.dumps(config, indent=1) + "\n")
        stream = SamplerStream(EpisodeSampler(train_src, config["way"], config["train_shot"], config["query"],
                                              config["episodes_per_batch"], s.seed, transform="train"),
                               s.batches_per_epoch, num_workers=num_workers,
                               pin_memory=ctx.device.type == "cuda")
        val = None
        if config["val_episodes"] > 0:
            val_src = _load_source(config["dataset"], config["data_root"], "val", src_opts)
            val = EvalEpisodes(EpisodeSampler(val_src, config["way"], config["val_shot"], config["val_query"], 1,
                                              config["val_seed"], transform="eval"), config["val_episodes"], 8)
        spec = {"config": config, "backbone": {"name": config["backbone"], "options": config["backbone_options"]},
                "head": {"name": config["head"], "options": config["head_options"]}}
        if ctx.is_main:
            print(f"metasparse train: {config['dataset']} {config['backbone']} + {config['head']} "
                  f"{config['head_options']} | {config['way']}-way {config['train_shot']}-shot, "
                  f"{config['episodes_per_batch']} episodes/batch x {s.batches_per_epoch} batches x {s.epochs} "
                  f"epochs on {ctx.device}" + (f" x {ctx.world_size} processes" if ctx.enabled else ""))
        return train(model, stream, val, s, out, spec=spec, device=ctx.device, resume=resume, ctx=ctx,
                     progress=progress, stop_after_steps=stop_after_steps, tensorboard=tensorboard,
                     val_total=len(val) if val is not None else None, sync_bn=sync_bn)
    finally:
        cleanup(ctx)


def cmd_train(args) -> int:
    out = Path(args.out)
    if args.resume:
        if not (out / "config.json").is_file():
            raise CLIError(f"--resume: {out} has no config.json (not a metasparse run directory)")
        if not (out / "last.pt").is_file():
            raise CLIError(f"--resume: {out} has no last.pt to resume from")
        config = json.loads((out / "config.json").read_text())
        if args.dataset is not None and args.dataset != config["dataset"]:
            raise CLIError(f"--dataset {args.dataset} contradicts the run being resumed ({config['dataset']})")
        args.dataset = config["dataset"]
        _check_resume_flags(args, config)
        if args.data_root:
            config["data_root"] = str(args.data_root)
        if args.epochs is not None:
            config["settings"]["epochs"] = args.epochs
        if args.strict_solver is not None:   # does not change the computation: may differ on resume
            config["settings"]["strict_solver"] = args.strict_solver
    else:
        if args.dataset is None:
            raise CLIError("--dataset is required (one of " + ", ".join(DATASETS) + ")")
        if out.exists() and ((out / "config.json").exists() or (out / "last.pt").exists()):
            raise CLIError(f"--out {out} already holds a run; pass --resume to continue it or choose a new --out")
        config = resolve_train_config(args)
    try:
        res = run_training(config, out, device=args.device, resume=args.resume, num_workers=args.num_workers,
                           progress=not args.no_progress, tensorboard=args.tensorboard,
                           stop_after_steps=args.stop_after_steps, sync_bn=args.sync_bn)
    except SolverConvergenceError as e:
        raise SolverConvergenceError(f"{e}; {_strict_resume_hint(out)}") from None
    if not res.get("stopped") and res.get("best") and os.environ.get("RANK", "0") == "0":
        b = res["best"]
        if b.get("val_accuracy") is not None:
            print(f"best validation accuracy {100 * b['val_accuracy']:.2f} +- {100 * b['val_ci95']:.2f}% "
                  f"at epoch {b['epoch']}; checkpoints in {out}/best.pt and {out}/last.pt")
    return 0


def _strict_resume_hint(out: Path) -> str:
    """How to go on after a --strict-solver stop (its step made no update, last.pt is intact)."""
    if (out / "last.pt").is_file():
        return (f"{out}/last.pt is the last good checkpoint: continue with --resume --no-strict-solver, "
                f"or start a new run with a larger max_iter in --head-options")
    return f"no checkpoint was written yet: delete {out} and start again with a larger max_iter in --head-options"


# ----------------------------------------------------------------------------- evaluate / compare
def _eval_head(ck_config: Dict[str, Any], head: Optional[str], lambda_ratio, solver, head_options):
    """(head name, options, module or None): a swapped / re-parameterised head, or None for the trained one."""
    extra = _json_arg(head_options, "--head-options")
    if head is None and lambda_ratio is None and solver is None and not extra:
        return ck_config["head"], ck_config["head_options"], None
    name = _head_name(head) if head is not None else ck_config["head"]
    base = dict(ck_config["head_options"]) if name == ck_config["head"] else {}
    base.update(_head_options(name, lambda_ratio, solver, extra))
    return name, base, build_head(name, base)


def _episode_sets(args, config, source, shots: List[int], seed: int):
    """{shot: re-iterable episodes} shared by every model being evaluated.

    Episode ``t`` of shot ``K`` is episode ``t`` of ``episodes.fixed.sample_fixed_episodes`` with
    seed ``seed + 7919 K``: the same tasks for every checkpoint and head, on every machine."""
    from episodes import fixed

    from .engine.streams import FixedStream

    if args.episodes_file:
        for flag, val in (("--shot", args.shot), ("--episodes", args.episodes), ("--way", args.way),
                          ("--query", args.query)):
            if val is not None:
                raise CLIError(f"{flag} contradicts --episodes-file (the file defines the episodes); drop one of them")
        fx = fixed.load_episodes(args.episodes_file, source)
        return {fx.shot: FixedStream(fx, source, args.batch_size)}, len(fx), fx.way
    way = _given(args.way, config["way"])
    query = _given(args.query, config.get("test_query", 15))
    n = _given(args.episodes, config.get("test_episodes", 1000))
    for flag, val in (("--way", way), ("--query", query)):
        if val < 1:
            raise CLIError(f"{flag} must be >= 1, got {val}")
    if n < 1:
        raise CLIError(f"--episodes must be >= 1, got {n}")
    sets = {}
    for k in shots:
        if k < 1:
            raise CLIError(f"--shot must be >= 1, got {k}")
        fx = fixed.sample_fixed_episodes(source, way, k, query, n, seed=seed + 7919 * k)
        sets[k] = FixedStream(fx, source, args.batch_size)
        if args.save_episodes:
            path = Path(args.save_episodes)
            if len(shots) > 1:
                path = path.with_name(f"{path.stem}_{k}shot{path.suffix}")
            fixed.save_episodes(path, fx)
            print(f"saved {n} {way}-way {k}-shot episodes to {path}")
    return sets, n, way


def _check_data_fits(ck, source) -> None:
    cfg = ck["config"]
    shape = _example_shape(source)
    if list(cfg.get("example_shape", shape)) != shape:
        raise CLIError(f"{ck['path']} was trained on {cfg['dataset']} examples of shape "
                       f"{tuple(cfg['example_shape'])}, the evaluation data has {tuple(shape)}")


def cmd_evaluate(args) -> int:
    from .engine.evaluate import evaluate_episodes

    ck = load_checkpoint(args.checkpoint)
    cfg = ck["config"]
    device = _device(args.device)
    source = _load_source(cfg["dataset"], args.data_root or cfg["data_root"], args.split, cfg.get("source_options", {}))
    _check_data_fits(ck, source)
    model = _load_model(ck).to(device)
    head_name, head_opts, head = _eval_head(cfg, args.head, args.lambda_ratio, args.solver, args.head_options)
    if head is not None:
        head.to(device)
    shots = args.shot if args.shot is not None else [1, 5]
    sets, n, way = _episode_sets(args, cfg, source, shots, args.seed)
    results = {}
    rows = []
    for k, eps in sets.items():
        r = evaluate_episodes(model, eps, device, head=head, progress=not args.no_progress,
                              desc=f"{k}-shot", total=len(eps)).summary()
        results[str(k)] = r
        rows.append([f"{way}-way {k}-shot", r["episodes"], f"{100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f}",
                     f"{100 * r['features_used_fraction']:.1f}", f"{r['features_used_mean']:.0f} / {r['n_features']}"])
    print(f"{ck['path']} | head {head_name} {head_opts} | {cfg['dataset']} {args.split}")
    _print_table(rows, ["task", "episodes", "accuracy (%)", "features used (%)", "features used (mean)"])
    payload = {"checkpoint": ck["path"], "dataset": cfg["dataset"], "split": args.split, "head": head_name,
               "head_options": head_opts, "trained_head": cfg["head"], "seed": args.seed,
               "episodes_file": args.episodes_file, "results": results}
    out = Path(args.out) if args.out else Path(ck["path"]).parent / f"eval_{head_name}_{args.split}.json"
    atomic_write_text(out, json.dumps(payload, indent=1) + "\n")
    print(f"results written to {out}")
    return 0


def _entry_name(ck_path: str, multi_ckpt: bool, head: str, opts: Dict[str, Any]) -> str:
    name = head
    if head in SPARSE_HEADS and "lambda_ratio" in opts:
        name += f"(r={opts['lambda_ratio']:g})"
    if multi_ckpt:
        name = f"{multi_ckpt[ck_path]}:{name}"
    return name


def cmd_compare(args) -> int:
    from .engine.compare import Entry, compare_entries, markdown_table, write_comparison

    device = _device(args.device)
    cks = [load_checkpoint(p) for p in args.checkpoints]
    ref_cfg = cks[0]["config"]
    for ck in cks[1:]:
        if ck["config"]["dataset"] != ref_cfg["dataset"] or ck["config"].get("example_shape") != ref_cfg.get("example_shape"):
            raise CLIError(f"compare: {ck['path']} was trained on {ck['config']['dataset']}, {cks[0]['path']} on "
                           f"{ref_cfg['dataset']}; compare checkpoints of one dataset")
    source = _load_source(ref_cfg["dataset"], args.data_root or ref_cfg["data_root"], args.split,
                          ref_cfg.get("source_options", {}))
    entries: List[Entry] = []
    multi = None
    if len(cks) > 1:  # label checkpoints by run directory, or run/file when runs repeat
        parents = [Path(ck["path"]).parent.name for ck in cks]
        multi = {ck["path"]: (p if parents.count(p) == 1 else f"{p}/{Path(ck['path']).stem}")
                 for ck, p in zip(cks, parents)}
    ratios = args.lambda_ratios
    for ck in cks:
        _check_data_fits(ck, source)
        model = _load_model(ck).to(device)
        heads = [_head_name(h) for h in args.heads] if args.heads else [None]
        for h in heads:
            if h is None:
                name, opts = ck["config"]["head"], ck["config"]["head_options"]
                entries.append(Entry(_entry_name(ck["path"], multi, name, opts), model, None,
                                     {"checkpoint": ck["path"], "head": name, "head_options": opts}))
                continue
            rs = ratios if (h in SPARSE_HEADS and ratios) else [None]
            for r in rs:
                name, opts, head = _eval_head(ck["config"], h, r, None, None)
                opts = dict(opts)
                if head is None:
                    head = build_head(name, opts)
                entries.append(Entry(_entry_name(ck["path"], multi, name, opts), model, head.to(device),
                                     {"checkpoint": ck["path"], "head": name, "head_options": opts}))
    if ratios and not any(e.info["head"] in SPARSE_HEADS for e in entries):
        raise CLIError("--lambda-ratios needs a group-sparse-svm entry (add it to --heads)")
    shots = args.shot if args.shot is not None else [1, 5]
    sets, n, way = _episode_sets(args, ref_cfg, source, shots, args.seed)
    result = compare_entries(entries, sets, device, progress=not args.no_progress)
    paths = write_comparison(result, args.out, extra={"dataset": ref_cfg["dataset"], "split": args.split,
                                                       "seed": args.seed, "way": way})
    print(markdown_table(result))
    print("written: " + ", ".join(paths.values()))
    return 0


# ----------------------------------------------------------------------------- prepare
def cmd_prepare(args) -> int:
    from episodes.sources import build_cifar_fs_fc100
    if not Path(args.cifar100).is_file():
        raise FileNotFoundError(f"--cifar100 {args.cifar100}: no such file (expected cifar-100-python.tar.gz)")
    written = build_cifar_fs_fc100(args.cifar100, args.out, args.dataset)
    for split, path in written.items():
        print(f"{args.dataset} {split}: {path}")
    return 0


# ----------------------------------------------------------------------------- parser
def _add_eval_flags(p, default_shots=True):
    p.add_argument("--data-root", help="dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--shot", type=int, nargs="+", help="support shots per class (default: 1 5)")
    p.add_argument("--way", type=int, help="classes per episode (default: the training way)")
    p.add_argument("--query", type=int, help="query examples per class (default 15)")
    p.add_argument("--episodes", type=int, help="episodes per shot (default: 1000; synthetic 500)")
    p.add_argument("--episodes-file", help="evaluate on the episodes saved in this file instead")
    p.add_argument("--save-episodes", help="save the sampled episodes to this file (reuse with --episodes-file)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation episodes (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="episodes per forward pass (does not change results)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    ap = argparse.ArgumentParser(prog="metasparse", description="Few-shot meta-learning with sparse heads "
                                 "(group-Lasso multiclass SVM vs MetaOptNet).")
    ap.add_argument("--version", action="version", version=f"metasparse {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train a backbone + head", description="Meta-train with MetaOptNet's "
                       "protocol (defaults per dataset; see docs/cli.md).")
    t.add_argument("--dataset", choices=DATASETS)
    t.add_argument("--data-root", help="folder holding the dataset files (not needed for synthetic)")
    t.add_argument("--source-options", help="JSON keyword arguments of the source (synthetic: n_factors, mixing, ...)")
    t.add_argument("--backbone", help="resnet12 | conv4 | mlp (default: resnet12; mlp for synthetic)")
    t.add_argument("--backbone-options", help="JSON options of the backbone, e.g. '{\"avg_pool\": true}'")
    t.add_argument("--head", default=None, help="group-sparse-svm | svm | ridge | protonet (default group-sparse-svm)")
    t.add_argument("--lambda-ratio", type=float, help="lambda1 / lambda_max per episode (group-sparse-svm)")
    t.add_argument("--solver", choices=["dual", "qpth", "cvxpylayers"], help="SVM solver")
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
    t.add_argument("--out", required=True, help="run directory (config.json, metrics.jsonl, last.pt, best.pt)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--amp", action="store_true", default=None, help="bf16 autocast for the backbone")
    t.add_argument("--head-dtype", choices=["float32", "float64"], help="dtype of the features given to the head")
    t.add_argument("--num-workers", type=int, default=0, help="DataLoader workers producing episodes")
    t.add_argument("--checkpoint-every", type=int, help="also save last.pt every N batches (default 200)")
    t.add_argument("--log-every", type=int, help="metrics.jsonl step record every N batches (default 10)")
    t.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard")
    t.add_argument("--strict-solver", action=argparse.BooleanOptionalAction, default=None,
                   help="stop with an error (exit status 1) at the first step where an episode's solver "
                        "stops short of its tolerance, instead of one warning per epoch")
    t.add_argument("--sync-bn", action="store_true", help="with torchrun on GPUs: batch-norm statistics over all ranks")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--stop-after-steps", type=int, help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="meta-test a checkpoint (accuracy +- 95%% CI, feature usage)")
    e.add_argument("--checkpoint", required=True, help="RUN_DIR/best.pt (or a run directory)")
    e.add_argument("--head", help="swap the head at test time (group-sparse-svm | svm | ridge | protonet)")
    e.add_argument("--lambda-ratio", type=float, help="lambda1 / lambda_max of the group-sparse-svm head")
    e.add_argument("--solver", choices=["dual", "qpth", "cvxpylayers"])
    e.add_argument("--head-options", help="JSON options of the (swapped) head")
    e.add_argument("--out", help="results JSON (default: next to the checkpoint)")
    _add_eval_flags(e)
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="compare checkpoints / heads on identical episodes")
    c.add_argument("checkpoints", nargs="+", help="checkpoints (RUN_DIR/best.pt) of one dataset")
    c.add_argument("--heads", nargs="+", help="evaluate every checkpoint with each of these heads")
    c.add_argument("--lambda-ratios", type=float, nargs="+", help="lambda ratios for the group-sparse-svm head")
    c.add_argument("--out", default="runs/compare", help="output folder (compare.json, compare.md, PNGs)")
    _add_eval_flags(c)
    c.set_defaults(func=cmd_compare)

    p = sub.add_parser("prepare", help="build CIFAR-FS / FC100 from cifar-100-python.tar.gz")
    p.add_argument("dataset", choices=["cifar-fs", "fc100"])
    p.add_argument("--cifar100", required=True, help="path to the official cifar-100-python.tar.gz")
    p.add_argument("--out", required=True, help="output folder for the MetaOptNet-format pickles")
    p.set_defaults(func=cmd_prepare)

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
    d.set_defaults(func=cmd_demo)
    return ap


def cmd_demo(args) -> int:
    from .engine.demo import run_demo
    run_demo(args)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, KeyError) as e:
        msg = str(e).strip().strip('"') or type(e).__name__
        print(f"metasparse {args.command}: error: {msg.splitlines()[0]}", file=sys.stderr)
        return 2
    except SolverConvergenceError as e:
        print(f"metasparse {args.command}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"metasparse {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
