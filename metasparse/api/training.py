"""``train(TrainConfig) -> TrainResult``: a new or resumed meta-training run."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..engine.checkpoint import atomic_write_text
from ..engine.config import TrainSettings
from ..engine.distributed import cleanup, init_distributed
from ..engine.streams import FixedStream, SamplerStream
from ..engine.train import train as run_engine
from ..errors import ConfigError, DataError
from ..registry import backbone_options_for_data
from .data import episode_sampler, example_shape, load_source, sample_fixed_episodes
from .model import ModelSpec, build_model
from .train_config import TrainConfig

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


def _run_config(config: TrainConfig) -> Dict[str, Any]:
    """The configuration of the run in ``config.out``: saved (resume) or resolved (new)."""
    out = config.out
    if config.resume:
        if not (out / "config.json").is_file():
            raise ConfigError(f"--resume: {out} has no config.json (not a metasparse run directory)")
        if not (out / "last.pt").is_file():
            raise ConfigError(f"--resume: {out} has no last.pt to resume from")
        return config.resumed_run_config(json.loads((out / "config.json").read_text()))
    if config.dataset is not None and out.exists() and ((out / "config.json").exists() or (out / "last.pt").exists()):
        raise ConfigError(f"--out {out} already holds a run; pass --resume to continue it or choose a new --out")
    return config.run_config()


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
    per epoch (main process only)."""
    run = _run_config(config)
    out = config.out
    ctx = init_distributed(config.device)
    try:
        if run["episodes_per_batch"] % ctx.world_size:
            raise ConfigError(f"--episodes-per-batch {run['episodes_per_batch']} is not divisible by the "
                              f"{ctx.world_size} processes")
        s = TrainSettings(**run["settings"])
        source_options = run.get("source_options", {})
        train_source = load_source(run["dataset"], run["data_root"], "train", source_options)
        shape = example_shape(train_source)
        if "example_shape" in run and list(run["example_shape"]) != shape:
            raise DataError(f"the data under {run['data_root']} has examples of shape {tuple(shape)}, the run was "
                            f"started on {tuple(run['example_shape'])}")
        run["example_shape"] = shape
        run["backbone_options"] = backbone_options_for_data(run["backbone"], run["backbone_options"], shape)
        torch.manual_seed(s.seed)   # same seed, same initial weights (on every rank)
        model = build_model(ModelSpec.from_config(run))
        run["n_features"] = int(model.backbone.output_dim(shape[-1]) if len(shape) == 3
                                else model.backbone.output_dim())
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if not config.resume:
                atomic_write_text(out / "config.json", json.dumps(run, indent=1) + "\n")
            else:   # --epochs raised on --resume: config.json records the new length
                _record_epochs(out / "config.json", s.epochs)
        stream = SamplerStream(episode_sampler(train_source, run["way"], run["train_shot"], run["query"],
                                               run["episodes_per_batch"], s.seed, "train"),
                               s.batches_per_epoch, num_workers=config.num_workers,
                               pin_memory=ctx.device.type == "cuda")
        val = None
        if run["val_episodes"] > 0:
            val_source = load_source(run["dataset"], run["data_root"], "val", source_options)
            val = FixedStream(sample_fixed_episodes(val_source, run["way"], run["val_shot"], run["val_query"],
                                                    run["val_episodes"], run["val_seed"]), val_source, 8)
        if ctx.is_main:
            print(f"metasparse train: {run['dataset']} {run['backbone']} + {run['head']} "
                  f"{run['head_options']} | {run['way']}-way {run['train_shot']}-shot, "
                  f"{run['episodes_per_batch']} episodes/batch x {s.batches_per_epoch} batches x {s.epochs} "
                  f"epochs on {ctx.device}" + (f" x {ctx.world_size} processes" if ctx.enabled else ""))
        res = run_engine(model, stream, val, s, out, spec={"config": run}, device=ctx.device, resume=config.resume,
                         ctx=ctx, progress=config.progress, stop_after_steps=config.stop_after_steps,
                         tensorboard=config.tensorboard, val_total=len(val) if val is not None else None,
                         sync_bn=config.sync_bn)
    finally:
        cleanup(ctx)
    return TrainResult(out, run, bool(res["stopped"]), int(res["global_step"]), res.get("best"),
                       res.get("last_val"), res.get("elapsed_s"), ctx.rank)
