"""Models from run configurations: the configuration is the one model specification.

A run configuration (``config.json``, a checkpoint's ``config``) names the backbone and
the head with their options; :class:`ModelSpec` is that part of it, :func:`build_model`
builds the :class:`~metasparse.engine.model.FewShotModel` it describes and
:func:`load_model` rebuilds a checkpoint's model with its weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..engine.checkpoint import load_checkpoint
from ..engine.model import FewShotModel
from ..errors import CheckpointError
from ..registry import build_backbone, build_head, head_entry, head_options

__all__ = ["ModelSpec", "build_model", "load_model", "checkpoint_model", "swapped_head"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class ModelSpec:
    """Backbone + head with their options, bf16 autocast of the backbone (``amp``) and
    the dtype of the features given to the head (``head_dtype``)."""

    backbone: str
    backbone_options: Dict[str, Any]
    head: str
    head_options: Dict[str, Any]
    amp: bool = False
    head_dtype: str = "float32"

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "config") -> "ModelSpec":
        """The model part of run configuration ``config`` (``where`` names it in errors)."""
        missing = [k for k in ("backbone", "backbone_options", "head", "head_options") if k not in config]
        if missing:
            raise CheckpointError(f"{where}: the run configuration lacks {missing}, so the model cannot be rebuilt")
        for key, kind in (("backbone", str), ("head", str), ("backbone_options", dict), ("head_options", dict)):
            if not isinstance(config[key], kind):
                raise CheckpointError(f"{where}: the run configuration's {key} must be a {kind.__name__}, "
                                      f"got {config[key]!r}")
        if config.get("head_dtype", "float32") not in _DTYPES:
            raise CheckpointError(f"{where}: the run configuration's head_dtype must be one of {list(_DTYPES)}, "
                                  f"got {config.get('head_dtype')!r}")
        return cls(config["backbone"], dict(config["backbone_options"]), config["head"],
                   dict(config["head_options"]), bool(config.get("amp", False)),
                   config.get("head_dtype", "float32"))


def build_model(spec: ModelSpec, head: Optional[nn.Module] = None) -> FewShotModel:
    """A freshly initialised model (the current torch RNG draws its weights); ``head``
    replaces the one ``spec`` names."""
    backbone = build_backbone(spec.backbone, spec.backbone_options)
    head = head if head is not None else build_head(spec.head, spec.head_options)
    return FewShotModel(backbone, head, amp=spec.amp, head_dtype=_DTYPES[spec.head_dtype])


def checkpoint_model(checkpoint: Dict[str, Any]) -> FewShotModel:
    """The model of a loaded checkpoint (:func:`metasparse.engine.checkpoint.load_checkpoint`)."""
    config = checkpoint["config"]
    bad = [k for k, v in checkpoint["model"].items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:   # a model with NaN / Inf weights would be scored (accuracy of argmax over NaN): refuse
        raise CheckpointError(f"{checkpoint['path']}: {len(bad)} weight tensor(s) hold NaN or Inf ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}); the model cannot be evaluated")
    model = build_model(ModelSpec.from_config(config, checkpoint["path"]))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise CheckpointError(f"{checkpoint['path']}: the weights do not fit backbone {config['backbone']} "
                              f"{config['backbone_options']} + head {config['head']}: "
                              f"{' '.join(lines[1:3])[:300]}") from None
    return model


def load_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Tuple[FewShotModel, Dict[str, Any]]:
    """``(model, checkpoint)``: the model saved in ``path`` (a ``.pt`` file or a run
    directory: its ``best.pt``, else ``last.pt``) on ``device``, and the checkpoint dict
    (``config``, ``progress``, ``best``, ``path`` ...)."""
    checkpoint = load_checkpoint(path)
    return checkpoint_model(checkpoint).to(device), checkpoint


def swapped_head(config: Mapping[str, Any], head: Optional[str], lambda_ratio: Optional[float], solver: Optional[str],
                 options: Optional[Mapping[str, Any]]) -> Tuple[str, Dict[str, Any], Optional[nn.Module]]:
    """``(name, options, module)`` of the head to evaluate a model of run ``config`` with:
    the trained head (module None) when nothing is given, else head ``head`` (default: the
    trained one, keeping its options) with ``lambda_ratio``, ``solver`` and ``options``."""
    if head is None and lambda_ratio is None and solver is None and not options:
        return config["head"], config["head_options"], None
    name = head_entry(head).name if head is not None else config["head"]
    opts = dict(config["head_options"]) if name == config["head"] else {}
    opts.update(head_options(name, lambda_ratio, solver, options))
    return name, opts, build_head(name, opts)
