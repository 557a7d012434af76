"""``train(TrainConfig) -> TrainResult``: a new or resumed meta-training run."""
from __future__ import annotations

import copy
import importlib
import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..engine.checkpoint import atomic_write_text, load_checkpoint
from ..engine.config import TrainSettings
from ..engine.distributed import cleanup, init_distributed, resolve_device
from ..engine.runlock import RunLock
from ..engine.streams import FixedStream, SamplerStream
from ..engine.train import read_jsonl
from ..engine.train import train as run_engine
from ..errors import ConfigError, DataError, MetasparseError
from ..options import OPTIONS, check_value
from ..registry import DATASETS, backbone_options_for_data
from .data import episode_sampler, example_shape, load_source, sample_fixed_episodes
from .model import ModelSpec, build_model
from .outputs import check_new_folder
from .train_config import TrainConfig, default_amp

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """What a training call did.

    ``run_dir``: the run directory; ``config``: the run configuration (``config.json``);
    ``stopped``: True when ``stop_after_steps`` ended the call early; ``global_step``:
    optimisation steps done so far; ``best``: ``{"epoch", "val_accuracy", "val_ci95"}``
    of ``best.pt``; ``last_val``: the last validation summary; ``elapsed_s``: seconds
    of this call; ``rank``: this process's rank (0 unless launched by torchrun)."""

    run_dir: Path
    config: Dict[str, Any]
    stopped: bool
    global_step: int
    best: Optional[Dict[str, Any]] = None
    last_val: Optional[Dict[str, Any]] = None
    elapsed_s: Optional[float] = None
    rank: int = 0


# the files of a run directory; a new run refuses a folder holding any of them
_RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.jsonl")
# temporary files of the run's atomic writes (``.NAME.XXXXXXXX.tmp``) a killed process leaves
_RUN_TEMP_FILES = re.compile(r"^\.(config\.json|last\.pt|best\.pt|metrics\.jsonl)\..+\.tmp$")


def _run_config(config: TrainConfig) -> Tuple[Dict[str, Any], bool]:
    """``(configuration, resume_from_last)`` of the run in ``config.out``: the saved one
    (resume) or the resolved one of a new run; ``resume_from_last`` is False for a run
    that starts at step 0 (new, or resumed before its first checkpoint existed)."""
    out = config.out
    if config.resume:
        if not (out / "config.json").is_file():
            raise ConfigError(f"--resume: {out} has no config.json (not a metasparse run directory)")
        saved = read_run_config(out / "config.json")
        if not (out / "last.pt").is_file():
            if (out / "best.pt").exists() or read_jsonl(out / "metrics.jsonl"):
                raise ConfigError(f"--resume: {out} has no last.pt to resume from (its best.pt or metrics.jsonl "
                                  f"show that the run went further); restore last.pt or start a new --out")
            # stopped between config.json and the step-0 checkpoint: the run starts afresh
            return config.resumed_run_config(saved), False
        return config.resumed_run_config(saved), True
    run = config.run_config()   # --dataset first: the usual mistake of a forgotten --resume comes next
    held = [name for name in _RUN_FILES if (out / name).exists()]
    if "config.json" in held or "last.pt" in held:
        raise ConfigError(f"--out {out} already holds a run; pass --resume to continue it or choose a new --out")
    if held:
        raise ConfigError(f"--out {out} holds {' and '.join(held)} but no run (no config.json); a new run would "
                          f"replace them: choose a new --out or move them away")
    return run, False


def read_run_config(path: Path) -> Dict[str, Any]:
    """The run configuration in ``path`` (a run's ``config.json``), checked well enough that
    a damaged or hand-edited file is one :class:`ConfigError` naming the file and the key."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; expected the JSON run configuration metasparse wrote") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); expected "
                          f"the run configuration metasparse wrote (was it edited or truncated?)") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object (the run configuration), got {type(cfg).__name__}")
    check_run_config(cfg, str(path))
    return cfg


# keys that runs written by older versions lack, and the value they trained with
_OLDER_RUNS = {"source_options": {}, "amp": False, "head_dtype": "float32"}
_OLDER_SETTINGS = {"strict_solver": False}


def check_run_config(cfg: Dict[str, Any], where: str) -> None:
    """Raise :class:`ConfigError` (naming ``where`` and the key) unless ``cfg`` has the keys
    of a run configuration, each value passing its option's check (:mod:`metasparse.options`);
    keys older runs lack are filled in."""
    for key, value in _OLDER_RUNS.items():
        cfg.setdefault(key, copy.deepcopy(value))
    run_options = [o for o in OPTIONS if o.stored == "run"]
    missing = [o.name for o in run_options if o.name not in cfg] + [k for k in ("settings", "val_seed")
                                                                     if k not in cfg]
    if missing:
        raise ConfigError(f"{where}: the run configuration lacks {missing} (not a metasparse run configuration, "
                          f"or an edited one)")
    for opt in run_options:
        if cfg[opt.name] is None and opt.name == "data_root":
            continue
        check_value(opt, cfg[opt.name], f"{where}: {opt.name}")
    if isinstance(cfg["val_seed"], bool) or not isinstance(cfg["val_seed"], int):
        raise ConfigError(f"{where}: val_seed must be an integer, got {cfg['val_seed']!r}")
    if cfg["dataset"] not in DATASETS:
        raise ConfigError(f"{where}: dataset {cfg['dataset']!r} is not one of {list(DATASETS)}")
    settings = cfg["settings"]
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: settings must be a mapping, got {settings!r}")
    for key, value in _OLDER_SETTINGS.items():
        settings.setdefault(key, value)
    known = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"{where}: settings has unknown key(s) {unknown}; expected some of {sorted(known)}")
    missing = [o.name for o in OPTIONS if o.stored == "settings" and o.name not in settings]
    if missing:
        raise ConfigError(f"{where}: settings lacks {missing}")
    check_settings(TrainSettings(**settings), where + ": settings.")


def check_settings(s: TrainSettings, prefix: str = "--") -> None:
    """The optimisation settings' checks (:mod:`metasparse.options`); ``prefix`` + the name
    (``--lr``, or ``FILE: settings.lr``) names each in the error."""
    for opt in OPTIONS:
        if opt.stored == "settings":
            name = prefix + (opt.name.replace("_", "-") if prefix == "--" else opt.name)
            check_value(opt, getattr(s, opt.name), name)


def _check_backbone_fits(model, shape: List[int], run: Dict[str, Any]) -> int:
    """One forward pass of a blank example (eval mode, no gradient, RNG untouched): images
    too small for the backbone fail here, before anything is written.  Returns the number
    of features the backbone gives (any backbone, a registered one too)."""
    was_training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()
            feats = model.backbone(torch.zeros(1, *shape))
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        if len(shape) != 3:
            raise DataError(f"--backbone {run['backbone']} {run['backbone_options']} fails on the examples of "
                            f"shape {tuple(shape)} ({first})") from None
        raise DataError(f"the images under {run['data_root']} ({shape[1]}x{shape[2]}) are too small for "
                        f"--backbone {run['backbone']} {run['backbone_options']} ({first})") from None
    finally:
        model.train(was_training)
    n = feats.reshape(1, -1).shape[1]
    if n == 0:
        raise DataError(f"--backbone {run['backbone']} {run['backbone_options']} gives 0 features on the "
                        f"examples of shape {tuple(shape)} under {run['data_root']}; the images are too small")
    return int(n)


def _remove_temp_files(out: Path) -> List[str]:
    """Delete the temporary files the run's atomic writes left behind (a process killed
    while writing); only names of the run's own files match."""
    removed = []
    for p in out.iterdir():
        if _RUN_TEMP_FILES.match(p.name) and p.is_file():
            p.unlink()
            removed.append(p.name)
    return removed


def _check_out(out: Path) -> None:
    """``--out`` must be a folder or a path that can become one."""
    check_new_folder(out, "a run directory (a folder)")


def _make_dirs(out: Path) -> List[Path]:
    """Create ``out`` and its missing parents; return those created (outermost first)."""
    missing = [p for p in (out, *out.parents) if not p.exists()][::-1]
    created = []
    try:
        for p in missing:
            p.mkdir()
            created.append(p)
    except FileExistsError:   # made by someone else meanwhile
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_dirs(created)
        raise ConfigError(f"--out {out}: cannot create {e.filename or out} ({e.strerror})") from None
    return created


def _remove_dirs(created: List[Path]) -> None:
    """Remove the folders this command created, innermost first, if they are empty."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            break


def _record_epochs(path: Path, epochs: int) -> None:
    """Set ``settings.epochs`` of the saved run configuration ``path`` (nothing else changes)."""
    saved = json.loads(path.read_text())
    if saved["settings"].get("epochs") != epochs:
        saved["settings"]["epochs"] = int(epochs)
        atomic_write_text(path, json.dumps(saved, indent=1) + "\n")


def train(config: TrainConfig) -> TrainResult:
    """Meta-train as ``config`` says (a new run in ``config.out``, or its continuation with
    ``resume``): build the sources, samplers and model, run
    :func:`metasparse.engine.train.train`. Prints one line describing the run, then one
    per epoch (main process only).

    What it promises about the files (docs/cli.md): the run directory is locked
    (``train.lock``) for the life of the call; everything is checked before the first
    file is written; a new run writes ``config.json`` then ``last.pt`` of step 0, and a
    failure before that ``last.pt`` removes what this call created (nothing else), so
    ``out`` is either a resumable run or not a run."""
    out = config.out
    main_process = _launch_rank() == 0   # the main process of a torchrun launch holds the lock
    created: List[Path] = []
    lock = None
    written: List[Path] = []
    finished = False
    try:
        if main_process:
            _check_out(out)
            if config.resume and not out.is_dir():
                raise ConfigError(f"--resume: {out} has no config.json (the folder does not exist; "
                                  f"not a metasparse run directory)")
            created = _make_dirs(out)
            lock = RunLock(out).acquire()
            if config.resume:
                _remove_temp_files(out)
        result = _train_locked(config, written)
        finished = True
        return result
    except DataError:
        # bad data found by the first step of a new run (nothing trained): the files of
        # step 0 go too, so the failed start leaves no run that can never finish
        if main_process and not config.resume and _untrained(out / "last.pt"):
            for name in ("last.pt", "metrics.jsonl"):
                (out / name).unlink(missing_ok=True)
        raise
    finally:
        # a failure before the first checkpoint: remove what this call created, nothing else
        if not finished and main_process and not (out / "last.pt").exists():
            for p in written:
                p.unlink(missing_ok=True)
        if lock is not None:
            lock.release()
        if not finished and not any((out / name).exists() for name in _RUN_FILES):
            _remove_dirs(created)


def _untrained(last: Path) -> bool:
    """Whether ``last`` is the step-0 checkpoint of a run (no optimisation step yet)."""
    try:
        return int(load_checkpoint(last)["progress"]["global_step"]) == 0
    except (MetasparseError, OSError, KeyError, TypeError, ValueError):
        return False


def _launch_rank() -> int:
    """This process's rank in a torchrun launch (0 without one), before torch.distributed starts."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def _train_locked(config: TrainConfig, written: List[Path]) -> TrainResult:
    """:func:`train` under the lock; appends to ``written`` each file it creates before
    the engine writes the first checkpoint."""
    run, resume = _run_config(config)
    new_run = not config.resume
    out = config.out
    ctx = init_distributed(config.device)
    if new_run and config.amp is None:   # the default depends on the device: recorded as resolved
        run["amp"] = default_amp(run["backbone"], ctx.device.type)
    try:
        if run["episodes_per_batch"] % ctx.world_size:
            raise ConfigError(f"--episodes-per-batch {run['episodes_per_batch']} is not divisible by the "
                              f"{ctx.world_size} processes")
        s = TrainSettings(**run["settings"])
        check_settings(s, "--" if new_run else f"{out / 'config.json'}: settings.")
        source_options = run.get("source_options", {})
        train_source = load_source(run["dataset"], run["data_root"], "train", source_options)
        shape = example_shape(train_source)
        if "example_shape" in run and list(run["example_shape"]) != shape:
            raise DataError(f"the data under {run['data_root']} has examples of shape {tuple(shape)}, the run was "
                            f"started on {tuple(run['example_shape'])}")
        run["example_shape"] = shape
        if getattr(train_source, "mean", None) is not None and getattr(train_source, "std", None) is not None:
            # the statistics the model's inputs were normalised with (a cross-domain evaluation reuses them)
            run["normalisation"] = {"mean": [float(v) for v in train_source.mean],
                                    "std": [float(v) for v in train_source.std]}
        run["backbone_options"] = backbone_options_for_data(run["backbone"], run["backbone_options"], shape)
        torch.manual_seed(s.seed)   # same seed, same initial weights (on every rank)
        model = build_model(ModelSpec.from_config(run))
        run["n_features"] = _check_backbone_fits(model, shape, run)
        # everything that can be checked is checked before the first file is written
        if config.tensorboard and ctx.is_main:
            try:
                importlib.import_module("torch.utils.tensorboard")
            except ImportError:
                raise ConfigError("--tensorboard needs the tensorboard package "
                                  "(pip install metasparse[tensorboard])") from None
        stream = SamplerStream(episode_sampler(train_source, run["way"], run["train_shot"], run["query"],
                                               run["episodes_per_batch"], s.seed, "train"),
                               s.batches_per_epoch, num_workers=config.num_workers,
                               pin_memory=ctx.device.type == "cuda",
                               device=ctx.device if (config.augment_device == "auto"
                                                     and ctx.device.type == "cuda") else None)
        val = None
        if run["val_episodes"] > 0:
            val_source = load_source(run["dataset"], run["data_root"], "val", source_options)
            if example_shape(val_source) != shape:
                raise DataError(f"the val split under {run['data_root']} has examples of shape "
                                f"{tuple(example_shape(val_source))}, the train split {tuple(shape)}; "
                                f"both splits must have the same image size")
            val = FixedStream(sample_fixed_episodes(val_source, run["way"], run["val_shot"], run["val_query"],
                                                    run["val_episodes"], run["val_seed"]), val_source, 8)
        if ctx.is_main and new_run:
            atomic_write_text(out / "config.json", json.dumps(run, indent=1) + "\n")
            written.append(out / "config.json")
        elif ctx.is_main:   # --epochs raised on --resume: config.json records the new length
            _record_epochs(out / "config.json", s.epochs)
        if ctx.is_main:
            print(f"metasparse train: {run['dataset']} {run['backbone']} + {run['head']} "
                  f"{run['head_options']} | {run['way']}-way {run['train_shot']}-shot, "
                  f"{run['episodes_per_batch']} episodes/batch x {s.batches_per_epoch} batches x {s.epochs} "
                  f"epochs on {ctx.device}" + (f" x {ctx.world_size} processes" if ctx.enabled else "")
                  + (" (bf16 autocast)" if run["amp"] else "") + (" (compiled backbone)" if config.compile else ""))
        res = run_engine(model, stream, val, s, out, spec={"config": run}, device=ctx.device, resume=resume,
                         ctx=ctx, progress=config.progress, stop_after_steps=config.stop_after_steps,
                         tensorboard=config.tensorboard, val_total=len(val) if val is not None else None,
                         sync_bn=config.sync_bn, compile_backbone=config.compile)
    finally:
        cleanup(ctx)
    return TrainResult(out, run, bool(res["stopped"]), int(res["global_step"]), res.get("best"),
                       res.get("last_val"), res.get("elapsed_s"), ctx.rank)


def resolved_config(config: TrainConfig) -> Dict[str, Any]:
    """The run configuration a new run of ``config`` would write to ``config.json``, after
    the checks of its settings (``metasparse train --print-config``)."""
    resolved = config.run_config(resolve_device(config.device).type)
    check_settings(TrainSettings(**resolved["settings"]), "--")
    return resolved
