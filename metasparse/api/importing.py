"""``import_checkpoint(ImportConfig) -> ImportResult``: a trained ResNet-12 from MetaOptNet or
learn2learn as a metasparse checkpoint, so that ``evaluate`` / ``compare`` swap heads on
it with no training.

Formats read (``torch.load(weights_only=True)``: no code from the file runs):

* ``metaoptnet``: MetaOptNet's ``train.py`` saves ``{"embedding": state_dict, "head":
  state_dict}``; the embedding is its ``models/ResNet12_embedding.py`` ResNet
  (``layer{1..4}.0.conv{1,2,3}.weight``, ``layer{1..4}.0.bn{1,2,3}.*``,
  ``layer{1..4}.0.downsample.{0,1}.*``), prefixed ``module.`` when it was trained under
  ``DataParallel`` (their miniImageNet runs); the head holds the learnable logit ``scale``.
* ``learn2learn``: the state dict of ``learn2learn.vision.models.ResNet12`` (keys
  ``features.layer{1..4}.0.*`` and ``classifier.*``; older versions also repeat the layers
  as ``features.{0..3}.0.*``) or of ``ResNet12Backbone`` (``layer{1..4}.0.*``); a
  ``module.`` prefix is dropped as well, ``classifier.*`` is not needed (the few-shot head
  replaces it).

Both map one to one onto :class:`metasparse.backbones.ResNet12`: ``layerN.0.X`` is
``stages.{N-1}.X`` with ``downsample`` renamed ``shortcut``; the widths (MetaOptNet's 64 /
160 / 320 / 640, or learn2learn's ``wider=False`` 64 / 128 / 256 / 512) are read from the
weights. A key the layout does not have, a missing key or a shape that does not fit is a
one-line :class:`~metasparse.errors.CheckpointError` naming the key.
"""
from __future__ import annotations

import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..engine.checkpoint import save_checkpoint
from ..errors import CheckpointError, CheckpointNotFoundError, ConfigError
from ..registry import dataset_entry, head_entry
from .model import ModelSpec, build_model
from .outputs import check_output_file
from .train_config import TrainConfig

__all__ = ["ImportConfig", "ImportResult", "import_checkpoint", "FORMATS", "convert_state_dict"]

PathLike = Union[str, Path]
FORMATS = ("metaoptnet", "learn2learn")
# image size of each dataset (the example shape of the imported checkpoint)
_IMAGE_SIZE = {"mini-imagenet": 84, "tiered-imagenet": 84, "cifar-fs": 32, "fc100": 32, "cub": 84}
_LAYER_KEY = re.compile(r"^layer([1-4])\.0\.(.+)$")
_PARTS = {"conv1", "conv2", "conv3", "bn1", "bn2", "bn3", "downsample"}


@dataclass
class ImportConfig:
    """Convert ``src`` (format ``from_format``: ``metaoptnet`` or ``learn2learn``), trained on
    ``dataset`` (any alias: ``miniImageNet``, ``CIFAR_FS``, ``FC100``), into the metasparse
    checkpoint ``out`` (replaced only with ``force``). ``data_root``: where ``evaluate`` /
    ``compare`` find the dataset by default. ``head`` / ``head_options``: the head stored
    with it (default ``svm``, MetaOptNet's SVM-CS; ``evaluate --head`` swaps it anyway);
    ``backbone_options``: e.g. ``{"avg_pool": true}`` for a 640-d learn2learn backbone."""

    src: PathLike
    from_format: str
    dataset: str
    out: PathLike
    data_root: Optional[PathLike] = None
    head: str = "svm"
    head_options: Optional[Dict[str, Any]] = None
    backbone_options: Optional[Dict[str, Any]] = None
    force: bool = False

    def __post_init__(self) -> None:
        if self.from_format not in FORMATS:
            raise ConfigError(f"--from {self.from_format!r}: expected one of {list(FORMATS)}")
        self.dataset = dataset_entry(self.dataset).name
        if self.dataset not in _IMAGE_SIZE:
            raise ConfigError(f"--dataset {self.dataset}: import takes an image dataset, one of {list(_IMAGE_SIZE)}")
        self.head = head_entry(self.head).name
        for flag, value in (("--head-options", self.head_options), ("--backbone-options", self.backbone_options)):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{flag}: expected a dict of options, got {value!r}")


@dataclass
class ImportResult:
    """``out``: the checkpoint written; ``config``: its run configuration; ``n_features``;
    ``ignored``: keys of the source not needed (a classifier layer); ``scale``: the logit
    scale taken from MetaOptNet's head (None when the file has none)."""

    out: Path
    config: Dict[str, Any]
    n_features: int
    ignored: Tuple[str, ...]
    scale: Optional[float]


def _load(src: Path) -> Any:
    if not src.is_file():
        raise CheckpointNotFoundError(f"{src}: no such file")
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:   # a forbidden global: say which, never torch's advice to load it anyway
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it references {found.group(1)}" if found else "it holds objects other than tensors and plain data"
        raise CheckpointError(f"{src}: not a loadable state dict ({what}, which a state dict never holds; "
                              f"refused without running it)") from None
    except Exception as e:  # truncated files, not a torch file (never retried unsafely)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "weights_only" not in ln]
        first = lines[0][:200] if lines else ""
        raise CheckpointError(f"{src}: not a loadable state dict ({type(e).__name__}"
                              f"{': ' + first if first else ''})") from None


def _strip(key: str, prefix: str) -> str:
    while key.startswith(prefix):
        key = key[len(prefix):]
    return key


def _layer_key(src: Path, key: str, fmt: str) -> str:
    """``layerN.0.X`` of a source key (after the prefixes), or a CheckpointError naming it."""
    m = _LAYER_KEY.match(key)
    if not m or m.group(2).split(".")[0] not in _PARTS:
        raise CheckpointError(f"{src}: unexpected key {key!r} for a {fmt} ResNet-12 (expected "
                              f"layer{{1-4}}.0.{{conv1-3,bn1-3,downsample}}.*)")
    return key


def convert_state_dict(state: Dict[str, Any], fmt: str, src: Path = Path("<state dict>")) -> Tuple[Dict[str, torch.Tensor], Tuple[str, ...]]:
    """``(ResNet12 state dict, ignored keys)`` of a MetaOptNet embedding or a learn2learn
    ResNet-12 state dict (``stages.{N-1}.X`` for ``layerN.0.X``, ``shortcut`` for
    ``downsample``)."""
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{src}: expected a non-empty state dict, got {type(state).__name__}")
    layers: Dict[str, torch.Tensor] = {}
    ignored = []
    duplicates: Dict[str, torch.Tensor] = {}
    for raw, value in state.items():
        if not isinstance(raw, str):
            raise CheckpointError(f"{src}: state dict key {raw!r} is not a string")
        key = _strip(raw, "module.")
        if fmt == "learn2learn":
            if key.startswith("classifier."):
                ignored.append(raw)
                continue
            m = re.match(r"^features\.([0-3])\.0\.(.+)$", key)   # older learn2learn: features = Sequential(layers)
            if m:
                duplicates[f"layer{int(m.group(1)) + 1}.0.{m.group(2)}"] = value
                continue
            key = _strip(key, "features.")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{src}: key {raw!r} holds a {type(value).__name__}, not a tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{src}: key {raw!r} holds NaN or Inf; the model cannot be imported")
        layers[_layer_key(src, key, fmt)] = value
    if not layers and duplicates:   # only the Sequential copy was saved
        layers = {_layer_key(src, k, fmt): v for k, v in duplicates.items()}
    for k, v in duplicates.items():
        if k in layers and (layers[k].shape != v.shape or not torch.equal(layers[k], v)):
            raise CheckpointError(f"{src}: key {k!r} and its copy under features.* differ")
    out = {}
    for key, value in layers.items():
        n, rest = _LAYER_KEY.match(key).groups()
        out[f"stages.{int(n) - 1}.{rest.replace('downsample.', 'shortcut.', 1)}"] = value
    return out, tuple(ignored)


def _widths(src: Path, stages: Dict[str, torch.Tensor]) -> Tuple[int, Tuple[int, ...]]:
    widths = []
    for i in range(4):
        w = stages.get(f"stages.{i}.conv1.weight")
        if w is None:
            raise CheckpointError(f"{src}: missing key 'layer{i + 1}.0.conv1.weight' of the ResNet-12")
        if w.dim() != 4:
            raise CheckpointError(f"{src}: key 'layer{i + 1}.0.conv1.weight' has shape {tuple(w.shape)}, "
                                  f"expected a 4-d convolution weight")
        widths.append(int(w.shape[0]))
    in_channels = int(stages["stages.0.conv1.weight"].shape[1])
    # every weight of the ResNet-12 these widths describe must be in the file: compare the
    # conv weights it would allocate with those the file holds before building it (a
    # 60000-channel first conv would otherwise build a 130 GB model)
    expected, cin = 0, in_channels
    for w in widths:
        expected += 9 * (cin * w + 2 * w * w) + cin * w
        cin = w
    held = sum(v.numel() for k, v in stages.items() if k.endswith(".weight") and v.dim() == 4)
    if expected > 4 * held + 10 ** 6:     # grossly more (a wrong shape is told key by key below)
        raise CheckpointError(f"{src}: the first convolutions declare widths {list(widths)}, a ResNet-12 of "
                              f"{expected / 1e6:.3g}M conv weights, but the file holds {held / 1e6:.3g}M; "
                              f"not a ResNet-12 state dict")
    return in_channels, tuple(widths)


def _source_key(key: str) -> str:
    """Our ``stages.{i}.X`` key named as the source names it (``layer{i+1}.0.X``)."""
    m = re.match(r"^stages\.(\d)\.(.+)$", key)
    if not m:
        return key
    return f"layer{int(m.group(1)) + 1}.0.{m.group(2).replace('shortcut.', 'downsample.', 1)}"


def import_checkpoint(config: ImportConfig) -> ImportResult:
    """Read ``config.src``, check every key and shape against metasparse's ResNet-12, write
    the checkpoint ``config.out`` (atomically; checked before the work)."""
    src = Path(config.src)
    out = check_output_file(config.out, "--out", force=config.force)
    data = _load(src)
    scale = None
    if config.from_format == "metaoptnet":
        if not isinstance(data, dict) or "embedding" not in data:
            keys = list(data)[:4] if isinstance(data, dict) else type(data).__name__
            raise CheckpointError(f"{src}: expected MetaOptNet's {{'embedding': ..., 'head': ...}} dict, got {keys}")
        state = data["embedding"]
        head_state = data.get("head")
        head_state = {} if head_state is None else head_state
        if not isinstance(head_state, dict):
            raise CheckpointError(f"{src}: 'head' holds a {type(head_state).__name__}, not a state dict")
        for k, v in head_state.items():
            if _strip(str(k), "module.") != "scale":
                raise CheckpointError(f"{src}: unexpected key 'head.{k}' (MetaOptNet's head holds 'scale' only)")
            if not isinstance(v, torch.Tensor) or v.numel() != 1:
                raise CheckpointError(f"{src}: key 'head.{k}' should hold one number, got "
                                      f"{getattr(v, 'shape', type(v).__name__)}")
            scale = float(v.reshape(()))
            if not math.isfinite(scale):
                raise CheckpointError(f"{src}: key 'head.{k}' holds {scale}; the logit scale must be finite")
    else:
        state = data.get("state_dict", data) if isinstance(data, dict) else data
    stages, ignored = convert_state_dict(state, config.from_format, src)
    in_channels, widths = _widths(src, stages)

    run = TrainConfig(out=out.parent, dataset=config.dataset, data_root=config.data_root, head=config.head,
                      head_options=config.head_options,
                      backbone_options={**(config.backbone_options or {}), "widths": list(widths),
                                        "in_channels": in_channels}).run_config()
    size = _IMAGE_SIZE[config.dataset]
    run["example_shape"] = [in_channels, size, size]
    model = build_model(ModelSpec.from_config(run, str(src)))
    run["n_features"] = int(model.backbone.output_dim(size))
    run["imported_from"] = {"path": str(src.resolve()), "format": config.from_format}
    target = model.state_dict()
    new_state = dict(target)
    for key, value in stages.items():
        tkey = f"backbone.{key}"
        if tkey not in target:
            raise CheckpointError(f"{src}: unexpected key {_source_key(key)!r} for metasparse's ResNet-12")
        if tuple(value.shape) != tuple(target[tkey].shape):
            raise CheckpointError(f"{src}: key {_source_key(key)!r} has shape {tuple(value.shape)}, metasparse's "
                                  f"ResNet-12 (widths {list(widths)}) expects {tuple(target[tkey].shape)}")
        new_state[tkey] = value.to(target[tkey].dtype)
    for tkey in target:
        key = tkey[len("backbone."):]
        if not tkey.startswith("backbone.") or key in stages:
            continue
        if key.endswith("dropblock.num_batches_tracked"):   # not saved by MetaOptNet: its ramp is over
            new_state[tkey] = torch.tensor(model.backbone.stages[int(key.split(".")[1])].dropblock.ramp_steps,
                                           dtype=target[tkey].dtype)
            continue
        if key.endswith("num_batches_tracked"):   # BatchNorm counters of PyTorch < 0.4.1 files
            continue
        raise CheckpointError(f"{src}: missing key {_source_key(key)!r} of the ResNet-12")
    if scale is not None and "head.scale" in new_state:
        new_state["head.scale"] = torch.full_like(target["head.scale"], scale)
    try:
        model.load_state_dict(new_state)
    except RuntimeError as e:  # pragma: no cover - every key and shape was checked above
        raise CheckpointError(f"{src}: {str(e).splitlines()[0]}") from None
    save_checkpoint(out, {"config": run, "model": model.state_dict(), "optimizer": None,
                          "progress": {"epoch": 0, "step": 0, "global_step": 0}, "best": None, "rng": None})
    return ImportResult(out, run, run["n_features"], ignored, scale)
