"""The contract every few-shot source satisfies.

A *source* is one split (train / val / test) of a dataset, held in memory as a
single tensor so that an episode is one vectorised gather:

* images: ``data`` uint8 (n, C, H, W) (channels first, contiguous);
* vectors: ``data`` float32 (n, D).

``labels`` holds the original class id of each example (int64, shape (n,)).
Class ids are those of the dataset (e.g. CIFAR-100 fine labels), so classes of
different splits never collide.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["FewShotSource"]


class FewShotSource(Dataset):
    """A split-aware in-memory dataset of ``(example, class id)``.

    Parameters
    ----------
    data:   uint8 (n, C, H, W) images or float (n, D) vectors.
    labels: (n,) integer class ids.
    split:  "train", "val" or "test".
    name:   dataset name used in messages and saved episode files.
    mean, std: per-channel normalisation constants (images only), in [0, 1] units.
    class_names: optional {class id: name} (wnid, CIFAR-100 fine label name, ...).
    path:   optional file or folder the split was read from (for messages).
    """

    def __init__(self, data: torch.Tensor, labels, split: str, name: str,
                 mean: Optional[Tuple[float, ...]] = None,
                 std: Optional[Tuple[float, ...]] = None,
                 class_names: Optional[Dict[int, str]] = None,
                 path: Optional[str] = None):
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if data.shape[0] != labels.shape[0]:
            raise ValueError(f"{name}/{split}: {data.shape[0]} examples but {labels.shape[0]} labels")
        self.data = data.contiguous()
        self.labels = labels
        self.split = split
        self.name = name
        self.mean = mean
        self.std = std
        self.class_names = dict(class_names) if class_names is not None else None
        self.path = path
        classes, counts = torch.unique(labels, return_counts=True)
        self.classes = classes                     # sorted class ids (int64)
        self.class_counts = counts
        order = torch.argsort(labels, stable=True)
        # indices_by_class[c] = LongTensor of example indices of class c (sorted)
        self.indices_by_class: Dict[int, torch.Tensor] = {
            int(c): idx for c, idx in zip(classes.tolist(), torch.split(order, counts.tolist()))
        }

    @property
    def is_image(self) -> bool:
        return self.data.dim() == 4

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i):
        return self.data[i], int(self.labels[i])

    def to(self, device) -> "FewShotSource":
        """Move ``data`` to ``device`` in place (labels and indices stay on the CPU) and return self.

        With the data on an accelerator, the sampler gathers and augments episodes there
        (use ``num_workers=0``: DataLoader workers cannot share accelerator tensors)."""
        self.data = self.data.to(device)
        return self

    def __repr__(self) -> str:
        kind = "images" if self.is_image else "vectors"
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"classes={len(self.classes)}, {kind} {tuple(self.data.shape[1:])})")


# -- helpers shared by the file-format readers ------------------------------------------
def str_keys(obj, where: str) -> dict:
    """Return a dataset pickle's top-level dict with ``str`` keys.

    Python 2 pickles read with ``encoding="latin1"`` already give ``str`` keys; files
    read with ``encoding="bytes"`` elsewhere give ``bytes`` keys.  Both are accepted.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def require_keys(d: dict, keys, where: str, expected: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; expected {expected}; found keys {sorted(map(str, d))}")


def images_nhwc_to_chw(arr, where: str, key: str) -> torch.Tensor:
    """Validate a uint8 (N, H, W, 3) array and return it as a contiguous uint8 (N, 3, H, W) tensor."""
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        desc = (f"{type(arr).__name__} {getattr(arr, 'dtype', '')} {getattr(arr, 'shape', '')}").strip()
        raise ValueError(f"{where}: '{key}' must be a uint8 array of shape (N, H, W, 3); got {desc}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()


def int_labels(labels, n: int, where: str, key: str) -> np.ndarray:
    """Validate a list/array of ``n`` integer labels."""
    try:
        out = np.asarray(labels)
    except Exception:  # pragma: no cover - defensive
        out = None
    if n == 0:
        raise ValueError(f"{where}: holds no images (an empty split)")
    if out is None or out.ndim != 1 or out.shape[0] != n or not np.issubdtype(out.dtype, np.integer):
        got = f"{type(labels).__name__} of length {len(labels) if hasattr(labels, '__len__') else '?'}"
        raise ValueError(f"{where}: '{key}' must be {n} integer labels (one per image); got {got}")
    return out.astype(np.int64)
