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
    """

    def __init__(self, data: torch.Tensor, labels, split: str, name: str,
                 mean: Optional[Tuple[float, ...]] = None,
                 std: Optional[Tuple[float, ...]] = None):
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if data.shape[0] != labels.shape[0]:
            raise ValueError(f"{name}/{split}: {data.shape[0]} examples but {labels.shape[0]} labels")
        self.data = data.contiguous()
        self.labels = labels
        self.split = split
        self.name = name
        self.mean = mean
        self.std = std
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

    def get_batch(self, index: torch.Tensor) -> torch.Tensor:
        """Gather examples by index (any shape); returns ``index.shape + example shape``."""
        flat = self.data.index_select(0, index.reshape(-1))
        return flat.reshape(*index.shape, *self.data.shape[1:])

    def __repr__(self) -> str:
        kind = "images" if self.is_image else "vectors"
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"classes={len(self.classes)}, {kind} {tuple(self.data.shape[1:])})")
