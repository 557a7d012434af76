"""The evaluation data of ``evaluate`` and ``compare``: the checkpoint's own dataset, or another
one (cross-domain evaluation, e.g. a miniImageNet model on CUB episodes).

A model sees its inputs as it was trained: a cross-domain split is brought to the
checkpoint's example shape and normalised with the *training* dataset's statistics:

* images of another size are resized to the checkpoint's ``(H, W)`` (bilinear with
  antialiasing, ``torchvision.transforms.v2.functional.resize`` on the uint8 images: once,
  before any episode is drawn, for a split held in memory; per episode, as its images are
  read, for a split read from disk); the aspect ratio follows the target (all few-shot
  images here are square);
* the normalisation ``(x / 255 - mean) / std`` uses the constants of the dataset the
  checkpoint was trained on (recorded in its ``config.json`` as ``normalisation``, else
  ``episodes.transforms.NORMALISATION``), not the evaluated one's;
* a different number of channels (Omniglot's grey 28x28 for an RGB model) or vector data is
  refused with one line: there is no faithful way to invent or drop colour channels.

Every result of such an evaluation carries :attr:`CrossDomain.label`,
``"cross-domain: trained on X, evaluated on Y"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..errors import CheckpointError, ConfigError, DataError
from ..registry import dataset_entry, dataset_name
from .data import check_data_fits, checkpoint_source, example_shape, load_source

__all__ = ["CrossDomain", "evaluation_source", "resize_images", "adapt_source"]

#: images resized at once (bounded temporary memory)
_CHUNK = 512


@dataclass(frozen=True)
class CrossDomain:
    """A cross-domain evaluation: checkpoint trained on ``trained_on``, evaluated on
    ``evaluated_on``, whose examples of shape ``data_shape`` were brought to ``example_shape``."""

    trained_on: str
    evaluated_on: str
    data_shape: Tuple[int, ...]
    example_shape: Tuple[int, ...]

    @property
    def label(self) -> str:
        return f"cross-domain: trained on {self.trained_on}, evaluated on {self.evaluated_on}"

    @property
    def resized(self) -> bool:
        return tuple(self.data_shape) != tuple(self.example_shape)

    def describe(self) -> str:
        """One line for the printed results and the reports."""
        shape = lambda s: "x".join(str(v) for v in s)   # noqa: E731
        how = (f"images resized from {shape(self.data_shape)} to {shape(self.example_shape)}, " if self.resized
               else "")
        return f"{self.label} ({how}normalised with {self.trained_on}'s statistics)"

    def payload(self) -> Dict[str, Any]:
        """The fields added to the results files."""
        return {"cross_domain": self.label, "trained_dataset": self.trained_on,
                "data_shape": list(self.data_shape), "example_shape": list(self.example_shape)}


def resize_images(data: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """uint8 (n, C, h, w) -> uint8 (n, C, H, W): bilinear, antialiased (torchvision v2)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F
    out = torch.empty((data.shape[0], data.shape[1], *size), dtype=torch.uint8)
    for lo in range(0, data.shape[0], _CHUNK):
        out[lo:lo + _CHUNK] = F.resize(data[lo:lo + _CHUNK], list(size), interpolation=InterpolationMode.BILINEAR,
                                       antialias=True)
    return out


class _ResizedStore:
    """The image store of a split read from disk (``LazyImageSource.data``), its images
    resized to ``size`` as they are read."""

    def __init__(self, store, size: Tuple[int, int]):
        self.store, self.size = store, tuple(size)
        self.shape = (int(store.shape[0]), int(store.shape[1])) + self.size
        self.dtype = store.dtype

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i) -> torch.Tensor:
        return resize_images(self.store[i][None], self.size)[0]

    def read_into(self, index, out) -> None:
        import numpy as np
        raw = np.empty((len(index),) + tuple(self.store.shape[1:]), dtype=np.uint8)
        self.store.read_into(index, raw)
        out[...] = resize_images(torch.from_numpy(raw), self.size).numpy()


def adapt_source(source, shape: Tuple[int, int, int], mean, std):
    """A copy of image ``source`` whose images have ``shape`` ``(C, H, W)`` (resized; the
    channels must agree) and whose normalisation constants are ``mean`` / ``std``."""
    import copy
    adapted = copy.copy(source)           # labels and class tables shared: never modified
    if tuple(source.example_shape) != tuple(shape):
        size = (int(shape[1]), int(shape[2]))
        adapted.data = (resize_images(source.data, size) if getattr(source, "in_memory", True)
                        else _ResizedStore(source.data, size))
    adapted.mean, adapted.std = tuple(mean), tuple(std)
    return adapted


def _normalisation(dataset: str, cfg: Dict[str, Any]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The statistics the checkpoint's inputs were normalised with: recorded in its run
    configuration (runs of this version), else those of its dataset."""
    recorded = cfg.get("normalisation")
    if isinstance(recorded, dict) and recorded.get("mean") and recorded.get("std"):
        return tuple(float(v) for v in recorded["mean"]), tuple(float(v) for v in recorded["std"])
    from episodes.transforms import NORMALISATION
    if dataset not in NORMALISATION:
        raise ConfigError(f"--dataset: a cross-domain evaluation normalises with the training dataset's "
                          f"statistics, and {dataset} has none (image datasets: {', '.join(NORMALISATION)})")
    mean, std = NORMALISATION[dataset]
    return tuple(mean), tuple(std)


def evaluation_source(checkpoint: Dict[str, Any], dataset: Optional[str], data_root, split: str):
    """``(source, cross)``: split ``split`` of ``dataset`` (default: the checkpoint's) read from
    ``data_root``, ready for the checkpoint's model; ``cross`` is a :class:`CrossDomain` when
    ``dataset`` is not the one the checkpoint was trained on, else None."""
    cfg = checkpoint["config"]
    trained = cfg.get("dataset")
    if dataset is None or trained is None or dataset_name(dataset) == dataset_name(trained):
        source = checkpoint_source(checkpoint, data_root, split)
        check_data_fits(checkpoint, source)
        return source, None
    dataset = dataset_name(dataset)
    trained = dataset_name(trained)
    if "example_shape" not in cfg:
        raise CheckpointError(f"{checkpoint['path']}: the run configuration lacks 'example_shape' (the input shape "
                              f"a cross-domain evaluation resizes to)")
    target: List[int] = [int(v) for v in cfg["example_shape"]]
    if len(target) != 3:
        raise DataError(f"--dataset {dataset}: {checkpoint['path']} was trained on {trained} vectors of shape "
                        f"{tuple(target)}; cross-domain evaluation takes image models")
    mean, std = _normalisation(trained, cfg)
    if not data_root:
        raise ConfigError(f"--data-root is required for --dataset {dataset} (the checkpoint was trained on "
                          f"{trained}, whose data root does not hold {dataset})")
    if dataset_entry(dataset).generated:
        raise ConfigError(f"--dataset {dataset}: cross-domain evaluation takes an image dataset read from files")
    source = load_source(dataset, data_root, split)
    shape = example_shape(source)
    if len(shape) != 3:
        raise DataError(f"--dataset {dataset}: its examples are vectors of shape {tuple(shape)}; {checkpoint['path']} "
                        f"takes images of shape {tuple(target)}")
    if shape[0] != target[0]:
        raise DataError(f"--dataset {dataset}: its images have {shape[0]} channel(s), {checkpoint['path']} was trained "
                        f"on {trained} images with {target[0]}; cross-domain evaluation needs the same number of "
                        f"channels")
    return adapt_source(source, tuple(target), mean, std), CrossDomain(trained, dataset, tuple(shape), tuple(target))
