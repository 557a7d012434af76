"""One registry of the names metasparse knows: heads, backbones and datasets.

The command line reads its choices from here, the Python API (:mod:`metasparse.api`)
validates names here, and run configurations (``config.json``, checkpoints) store the
canonical names defined here:

* :data:`HEADS`: ``group-sparse-svm``, ``svm``, ``ridge``, ``protonet`` (with aliases,
  the ``solver`` values each accepts and whether it takes ``lambda_ratio``);
* :data:`BACKBONES`: ``resnet12``, ``conv4`` (images), ``mlp`` (vectors);
* :data:`DATASETS`: the datasets with training defaults
  (:data:`metasparse.engine.config.DATASET_DEFAULTS`), the ones
  ``episodes.sources.load_source`` reads (a test checks that the two agree; the
  registry does not import ``episodes``, so that ``metasparse --help`` stays fast).

Unknown names and options a head or backbone does not take raise
:class:`~metasparse.errors.ConfigError`.
"""
from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence, Tuple

from .engine.config import DATASET_DEFAULTS
from .errors import ConfigError

if TYPE_CHECKING:   # the classes are imported when first built: the registry itself needs no torch
    from torch import nn

    from .heads import Head

__all__ = ["HeadEntry", "BackboneEntry", "DatasetEntry", "HEADS", "BACKBONES", "DATASETS", "SOLVERS",
           "DEFAULT_HEAD", "head_entry", "head_options", "build_head", "backbone_entry", "build_backbone",
           "backbone_options_for_data", "dataset_entry", "dataset_name", "dataset_defaults"]


# ----------------------------------------------------------------------------- heads
@dataclass(frozen=True)
class HeadEntry:
    """A head: canonical ``name``, its class, accepted ``aliases``, the values its
    ``solver`` option takes (empty: no solver option) and whether it is ``sparse``
    (takes ``lambda_ratio = lambda1 / lambda_max``)."""

    name: str
    target: str                      # "module:Class", imported on first use
    aliases: Tuple[str, ...] = ()
    solvers: Tuple[str, ...] = ()
    sparse: bool = False

    @property
    def cls(self) -> type:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


#: the values of the SVM heads' ``solver`` option, in the order the CLI lists them
SOLVERS = ("dual", "qpth", "cvxpylayers")

HEADS: Dict[str, HeadEntry] = {e.name: e for e in (
    HeadEntry("group-sparse-svm", "metasparse.heads:GroupSparseSVMHead", ("gs-svm",), ("dual", "cvxpylayers"),
              sparse=True),
    HeadEntry("svm", "metasparse.heads:SVMHead", ("svm-cs", "metaoptnet-svm"), ("dual", "qpth", "cvxpylayers")),
    HeadEntry("ridge", "metasparse.heads:RidgeHead", ("rr", "r2d2", "metaoptnet-rr")),
    HeadEntry("protonet", "metasparse.heads:ProtoNetHead", ("proto",)),
)}
DEFAULT_HEAD = "group-sparse-svm"
_HEAD_KEYS = {key: e.name for e in HEADS.values() for key in (e.name, *e.aliases)}


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-").replace(" ", "-")


def head_entry(name: str) -> HeadEntry:
    """The head called ``name`` (any case, dashes or underscores, or an alias)."""
    key = _HEAD_KEYS.get(_key(name))
    if key is None:
        raise ConfigError(f"--head {name!r}: expected one of {list(HEADS)}")
    return HEADS[key]


def head_options(head: str, lambda_ratio: Optional[float] = None, solver: Optional[str] = None,
                 extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The constructor options of ``head``: ``lambda_ratio`` and ``solver`` (checked
    against what the head takes), then ``extra`` (passed as given)."""
    entry = head_entry(head)
    opts: Dict[str, Any] = {}
    if lambda_ratio is not None:
        if not entry.sparse:
            sparse = " / ".join(e.name for e in HEADS.values() if e.sparse)
            raise ConfigError(f"--lambda-ratio applies to the {sparse} head only, not --head {entry.name}")
        if lambda_ratio < 0:
            raise ConfigError(f"--lambda-ratio must be >= 0, got {lambda_ratio}")
        opts["lambda_ratio"] = float(lambda_ratio)
    if solver is not None:
        if not entry.solvers:
            raise ConfigError(f"--solver applies to the SVM heads only, not --head {entry.name}")
        if solver not in entry.solvers:
            if solver == "qpth":
                raise ConfigError("--solver qpth solves the vanilla SVM (lambda1 = 0) only; use --head svm")
            raise ConfigError(f"--solver {solver!r}: expected one of {list(entry.solvers)} for --head {entry.name}")
        opts["solver"] = solver
    opts.update(extra or {})
    return opts


def build_head(name: str, options: Optional[Mapping[str, Any]] = None) -> "Head":
    """Instantiate head ``name`` with keyword ``options``; options it does not take or
    values it rejects raise :class:`ConfigError`."""
    entry = head_entry(name)
    options = dict(options or {})
    try:
        return entry.cls(**options)
    except TypeError as e:
        raise ConfigError(f"head {name!r}: bad options {options}: {e}") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None


# ----------------------------------------------------------------------------- backbones
@dataclass(frozen=True)
class BackboneEntry:
    """A backbone of :func:`metasparse.backbones.build_backbone`: canonical ``name``,
    whether it reads ``images`` (C, H, W) or vectors, and the options it ignores
    (dropped from its options rather than rejected)."""

    name: str
    images: bool
    ignored_options: Tuple[str, ...] = ()


BACKBONES: Dict[str, BackboneEntry] = {e.name: e for e in (
    BackboneEntry("resnet12", images=True),
    BackboneEntry("conv4", images=True, ignored_options=("dropblock_size", "drop_rate")),
    BackboneEntry("mlp", images=False),
)}


def backbone_entry(name: str) -> BackboneEntry:
    """The backbone called ``name`` (any case, with or without dashes / underscores)."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in BACKBONES:
        names = list(BACKBONES)
        raise ConfigError(f"--backbone {name!r}: expected {', '.join(names[:-1])} or {names[-1]}")
    return BACKBONES[key]


def build_backbone(name: str, options: Optional[Mapping[str, Any]] = None) -> "nn.Module":
    """Instantiate backbone ``name`` with keyword ``options`` (:class:`ConfigError` if it rejects them)."""
    try:
        from .backbones import build_backbone as _build_backbone
        return _build_backbone(backbone_entry(name).name, **dict(options or {}))
    except (ValueError, OverflowError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not msg.startswith("backbone"):   # a value the backbone's code could not use (int("x") ...)
            msg = f"backbone {name!r}: bad options {dict(options or {})}: {msg}"
        raise ConfigError(msg) from None


def backbone_options_for_data(name: str, options: Mapping[str, Any], example_shape: Sequence[int]) -> Dict[str, Any]:
    """``options`` completed with what the data determines: input channels of an image
    backbone, input (and default output) dimension of the MLP."""
    entry = backbone_entry(name)
    shape = tuple(int(s) for s in example_shape)
    opts = dict(options)
    if not entry.images:
        if len(shape) != 1:
            raise ConfigError(f"--backbone {entry.name} needs vector data, the data has examples of shape {shape}")
        opts.setdefault("in_dim", shape[0])
        opts.setdefault("out_dim", shape[0])
        return opts
    if len(shape) != 3:
        vector = [e.name for e in BACKBONES.values() if not e.images]
        raise ConfigError(f"--backbone {entry.name} needs images, the data has vectors of shape {shape}; "
                          f"use --backbone {' or '.join(vector)}")
    opts.setdefault("in_channels", shape[0])
    for key in entry.ignored_options:
        opts.pop(key, None)
    return opts


# ----------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DatasetEntry:
    """A dataset of ``episodes.sources.load_source``: its training ``defaults``,
    whether it is ``generated`` (no files, no data root) and whether ``metasparse
    prepare`` builds it from the CIFAR-100 archive (``from_cifar100``)."""

    name: str
    defaults: Mapping[str, Any]
    generated: bool = False
    from_cifar100: bool = False


_GENERATED = ("synthetic",)
_FROM_CIFAR100 = ("cifar-fs", "fc100")
DATASETS: Dict[str, DatasetEntry] = {
    name: DatasetEntry(name, defaults, name in _GENERATED, name in _FROM_CIFAR100)
    for name, defaults in DATASET_DEFAULTS.items()}


def _dataset_key(name: str) -> str:
    return "".join(c for c in str(name).strip().lower() if c not in "-_ ")


# the names users type: MetaOptNet's (miniImageNet, CIFAR_FS, FC100), learn2learn's, any case,
# with or without dashes / underscores
_DATASET_KEYS = {_dataset_key(name): name for name in DATASETS}


def dataset_name(name: str) -> str:
    """The canonical name (stored in run configs) of dataset ``name``: ``miniImageNet``,
    ``mini_imagenet``, ``CIFAR_FS``, ``cifarfs``, ``FC100``... in any case."""
    key = _DATASET_KEYS.get(_dataset_key(name))
    if key is None:
        raise ConfigError(f"--dataset {name!r}: expected one of {list(DATASETS)} (any case; MetaOptNet's "
                          f"miniImageNet, CIFAR_FS, FC100 work too)")
    return key


def dataset_entry(name: str) -> DatasetEntry:
    """The dataset called ``name`` (a canonical name or one :func:`dataset_name` resolves)."""
    return DATASETS[dataset_name(name)]


def dataset_defaults(name: str) -> Dict[str, Any]:
    """A fresh copy of the training defaults of dataset ``name``."""
    return copy.deepcopy(dict(dataset_entry(name).defaults))
