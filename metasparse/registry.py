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
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .engine.config import DATASET_DEFAULTS
from .errors import ConfigError

if TYPE_CHECKING:   # the classes are imported when first built: the registry itself needs no torch
    from torch import nn

    from .heads import Head

__all__ = ["HeadEntry", "BackboneEntry", "DatasetEntry", "HEADS", "BACKBONES", "DATASETS", "SOLVERS",
           "DEFAULT_HEAD", "head_entry", "head_options", "build_head", "backbone_entry", "build_backbone",
           "backbone_options_for_data", "dataset_entry", "dataset_name", "dataset_defaults", "register_head",
           "register_backbone", "register_dataset", "load_plugins"]


# ----------------------------------------------------------------------------- heads
@dataclass(frozen=True)
class HeadEntry:
    """A head: canonical ``name``, its class, accepted ``aliases``, the values its
    ``solver`` option takes (empty: no solver option) and whether it is ``sparse``
    (takes ``lambda_ratio = lambda1 / lambda_max``)."""

    name: str
    target: Union[str, type]         # "module:Class", imported on first use, or the class (register_head)
    aliases: Tuple[str, ...] = ()
    solvers: Tuple[str, ...] = ()
    sparse: bool = False

    @property
    def cls(self) -> type:
        if not isinstance(self.target, str):
            return self.target
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
    factory: Optional[Callable[..., "nn.Module"]] = None   # a registered backbone (register_backbone)


BACKBONES: Dict[str, BackboneEntry] = {e.name: e for e in (
    BackboneEntry("resnet12", images=True),
    BackboneEntry("conv4", images=True, ignored_options=("dropblock_size", "drop_rate")),
    BackboneEntry("mlp", images=False),
)}


def _backbone_key(name: str) -> str:
    return str(name).strip().lower().replace("-", "").replace("_", "")


_BACKBONE_KEYS = {_backbone_key(name): name for name in BACKBONES}


def backbone_entry(name: str) -> BackboneEntry:
    """The backbone called ``name`` (any case, with or without dashes / underscores)."""
    key = _BACKBONE_KEYS.get(_backbone_key(name))
    if key is None:
        names = list(BACKBONES)
        raise ConfigError(f"--backbone {name!r}: expected {', '.join(names[:-1])} or {names[-1]}")
    return BACKBONES[key]


def build_backbone(name: str, options: Optional[Mapping[str, Any]] = None) -> "nn.Module":
    """Instantiate backbone ``name`` with keyword ``options`` (:class:`ConfigError` if it rejects them)."""
    entry = backbone_entry(name)
    try:
        if entry.factory is not None:
            try:
                return entry.factory(**dict(options or {}))
            except TypeError as e:
                raise ValueError(f"backbone {entry.name!r}: bad options {dict(options or {})}: {e}") from None
        from .backbones import build_backbone as _build_backbone
        return _build_backbone(entry.name, **dict(options or {}))
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
    loader: Optional[Callable[..., Any]] = None   # a registered dataset (register_dataset)


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


# ----------------------------------------------------------------------------- your own
def _new_name(name: str, taken: Mapping[str, str], what: str, replace: bool) -> str:
    canonical = _key(name)
    if not canonical or not all(c.isalnum() or c == "-" for c in canonical):
        raise ConfigError(f"register_{what}({name!r}): a name is letters, digits and dashes")
    if not replace and any(key in taken for key in {canonical, _dataset_key(canonical)}):
        raise ConfigError(f"register_{what}({name!r}): a {what} of that name exists (pass replace=True)")
    return canonical


def register_head(name: str, cls: type, *, aliases: Sequence[str] = (), solvers: Sequence[str] = (),
                  sparse: bool = False, replace: bool = False) -> HeadEntry:
    """Make ``--head NAME`` (and ``head="NAME"`` in :class:`~metasparse.api.TrainConfig`,
    saved run configurations, ``evaluate`` / ``compare``) build ``cls(**head_options)``:
    a subclass of :class:`metasparse.heads.Head` (``fit`` the support set, ``_scores`` of
    the query).  ``solvers``: the values its ``solver`` option takes; ``sparse``: it takes
    ``lambda_ratio``."""
    from .heads import Head
    if not (isinstance(cls, type) and issubclass(cls, Head)):
        raise ConfigError(f"register_head({name!r}): expected a subclass of metasparse.heads.Head, got {cls!r}")
    canonical = _new_name(name, _HEAD_KEYS, "head", replace)
    for alias in aliases:
        taken = _HEAD_KEYS.get(_key(alias))
        if taken is not None and not (replace and taken == canonical):
            raise ConfigError(f"register_head({name!r}): alias {alias!r} already names head {taken!r}")
    entry = HeadEntry(canonical, cls, tuple(_key(a) for a in aliases), tuple(solvers), bool(sparse))
    HEADS[canonical] = entry
    _HEAD_KEYS.update({key: canonical for key in (canonical, *entry.aliases)})
    return entry


def register_backbone(name: str, factory: Callable[..., "nn.Module"], *, images: bool = True,
                      replace: bool = False) -> BackboneEntry:
    """Make ``--backbone NAME`` build ``factory(**backbone_options)``: an ``nn.Module``
    mapping a batch of examples, (n, C, H, W) images (``images``) or (n, D) vectors, to
    (n, d) features.  An image backbone's ``in_channels`` and a vector backbone's
    ``in_dim`` / ``out_dim`` are filled from the data when its options do not give them."""
    if not callable(factory):
        raise ConfigError(f"register_backbone({name!r}): expected a callable returning an nn.Module")
    canonical = _new_name(name, _BACKBONE_KEYS, "backbone", replace)
    entry = BackboneEntry(canonical, images=bool(images), factory=factory)
    BACKBONES[canonical] = entry
    _BACKBONE_KEYS[_backbone_key(canonical)] = canonical
    return entry


def register_dataset(name: str, loader: Callable[..., Any], *, defaults: Optional[Mapping[str, Any]] = None,
                     needs_data_root: bool = True, replace: bool = False) -> DatasetEntry:
    """Make ``--dataset NAME`` read its splits with ``loader(data_root, split, **source_options)``,
    which returns an :class:`episodes.FewShotSource` (``split`` is "train", "val" or
    "test"; it raises ``FileNotFoundError`` / ``ValueError`` for missing / bad files).
    ``defaults``: its training defaults, over MetaOptNet's common protocol
    (:data:`metasparse.engine.config.COMMON_DEFAULTS`: ResNet-12, 5-way, SGD...), e.g.
    ``{"train_shot": 5, "backbone": "conv4"}``; ``needs_data_root=False`` for a
    generated dataset."""
    from episodes.sources import register_source
    from .engine.config import COMMON_DEFAULTS
    from .options import OPTIONS
    if not callable(loader):
        raise ConfigError(f"register_dataset({name!r}): expected a callable loader(data_root, split, **options)")
    # a dataset's defaults: the options of a run, except those a run takes from elsewhere
    known = ({o.name for o in OPTIONS if o.stored is not None} | set(COMMON_DEFAULTS)
             | {"lr_factors"}) - {"data_root", "source_options", "head_options"}
    unknown = sorted(set(defaults or {}) - known)
    if unknown:
        raise ConfigError(f"register_dataset({name!r}): unknown default(s) {unknown}; expected some of {sorted(known)}")
    canonical = _new_name(name, _DATASET_KEYS, "dataset", replace)
    merged = {**COMMON_DEFAULTS, "train_shot": 5, "label_smoothing": 0.0, "backbone_options": {}, **(defaults or {})}
    # (its head / backbone may be registered later: a new run stores their canonical names)
    entry = DatasetEntry(canonical, merged, generated=not needs_data_root, loader=loader)
    register_source(canonical, loader, replace=True)
    DATASETS[canonical] = entry
    _DATASET_KEYS[_dataset_key(canonical)] = canonical
    return entry


#: the environment variable naming plugin modules (comma-separated module names or .py files)
PLUGINS_VARIABLE = "METASPARSE_PLUGINS"
#: the entry-point group of installed plugin packages
PLUGINS_GROUP = "metasparse.plugins"
_LOADED: List[str] = []


def load_plugins() -> List[str]:
    """Import the plugins that register datasets, backbones and heads (once per process):
    the modules or ``.py`` files named in ``$METASPARSE_PLUGINS`` (comma-separated), then
    the entry points of group ``metasparse.plugins`` of installed packages.  The command
    line calls it before reading its arguments.  Returns what was imported."""
    import os
    import sys
    from importlib import metadata
    loaded = []
    for spec in filter(None, (p.strip() for p in os.environ.get(PLUGINS_VARIABLE, "").split(","))):
        if spec in _LOADED:
            continue
        try:
            if spec.endswith(".py"):
                from importlib.util import module_from_spec, spec_from_file_location
                module_name = "metasparse_plugin_" + "".join(c if c.isalnum() else "_"
                                                              for c in os.path.basename(spec)[:-3])
                module_spec = spec_from_file_location(module_name, spec)
                if module_spec is None or not os.path.isfile(spec):
                    raise FileNotFoundError(f"no such file {spec}")
                module = module_from_spec(module_spec)
                sys.modules[module_name] = module   # as an import does: dataclasses, pickling find it
                try:
                    module_spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(module_name, None)
                    raise
            else:
                importlib.import_module(spec)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ConfigError(f"{PLUGINS_VARIABLE}: cannot import plugin {spec!r} ({type(e).__name__}: {first})"
                              ) from None
        _LOADED.append(spec)
        loaded.append(spec)
    eps = metadata.entry_points()
    eps = eps.select(group=PLUGINS_GROUP) if hasattr(eps, "select") else eps.get(PLUGINS_GROUP, ())   # Python 3.9
    for ep in eps:
        key = f"{ep.name}={ep.value}"
        if key in _LOADED:
            continue
        try:
            ep.load()
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ConfigError(f"plugin {key} (entry point {PLUGINS_GROUP}): cannot import it "
                              f"({type(e).__name__}: {first})") from None
        _LOADED.append(key)
        loaded.append(key)
    return loaded
