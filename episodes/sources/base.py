"""The contract every few-shot source satisfies.

A *source* is one split (train / val / test) of a dataset.  Usually it is held in
memory as a single tensor so that an episode is one vectorised gather:

* images: ``data`` uint8 (n, C, H, W) (channels first, contiguous);
* vectors: ``data`` float32 (n, D).

A split too large for memory (tieredImageNet's 448k training images are 9.5 GB
decoded) is a :class:`LazyImageSource`: its ``data`` is an *image store* that reads
(and decodes) from disk only the images an episode gathers.  Whoever reads examples
goes through :meth:`FewShotSource.gather` (``source.gather(index)`` -> uint8
``(M, C, H, W)``), which is one ``index_select`` for an in-memory source.

``labels`` holds the original class id of each example (int64, shape (n,)).
Class ids are those of the dataset (e.g. CIFAR-100 fine labels), so classes of
different splits never collide.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .checks import int_labels, require_keys, str_keys  # noqa: F401  (readers import them from here too)

__all__ = ["FewShotSource", "LazyImageSource"]


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
        self.data = self._own(data)
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

    #: True: ``data`` is one tensor holding every example (False: :class:`LazyImageSource`)
    in_memory = True

    @staticmethod
    def _own(data):
        return data.contiguous()

    @property
    def example_shape(self) -> Tuple[int, ...]:
        """The shape of one example: ``(C, H, W)`` images or ``(D,)`` vectors."""
        return tuple(int(s) for s in self.data.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def is_image(self) -> bool:
        return len(self.data.shape) == 4

    def __len__(self) -> int:
        return self.data.shape[0]

    def gather(self, index: torch.Tensor, pin_memory: bool = False) -> torch.Tensor:
        """Examples ``index`` (int64, any shape, flattened) as one new tensor ``(M, *example_shape)``
        on the source's device; ``pin_memory``: in pinned host memory (CPU sources).  Inside a
        DataLoader worker the tensor is allocated in shared memory (no copy to send it)."""
        data = self.data
        shape = (index.numel(),) + tuple(data.shape[1:])
        if pin_memory and data.device.type == "cpu":
            out = torch.empty(shape, dtype=data.dtype, pin_memory=True)
        else:
            from ..transforms import empty_output
            out = empty_output(shape, data.dtype, data.device)
        return torch.index_select(data, 0, index.reshape(-1).to(data.device), out=out)

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


class LazyImageSource(FewShotSource):
    """An image split read from disk per episode: ``data`` is an *image store*, not a tensor.

    A store has ``shape`` ``(n, C, H, W)``, ``dtype`` (``torch.uint8``), ``len(store)``,
    ``store[i]`` (one uint8 ``(C, H, W)`` tensor) and ``store.read_into(index, out)``, which
    fills the uint8 numpy array ``out`` ``(M, C, H, W)`` (any strides) with images ``index``
    (int64 numpy).
    A store holds no pixels, only where they are on disk, and can be pickled (DataLoader
    workers with the ``spawn`` start method) and forked: each process opens its own file.

    :meth:`gather` reads exactly the images it is asked for, so the resident memory of a
    training run does not grow with the size of the split.  The sampler, fixed episodes,
    evaluation and ``store[i]`` (``to_meta_dataset``) all read through it.
    """

    in_memory = False

    @staticmethod
    def _own(data):
        return data

    def gather(self, index: torch.Tensor, pin_memory: bool = False) -> torch.Tensor:
        """Images ``index`` read from disk as uint8 ``(M, C, H, W)`` in ``torch.channels_last``
        layout (each image's bytes land as the files store them, (H, W, C), with no transposing
        pass; the transforms read either layout, and the values are those of ``data[i]``)."""
        index = index.reshape(-1)
        c, h, w = self.example_shape
        shape = (index.numel(), h, w, c)
        if pin_memory:
            rows = torch.empty(shape, dtype=self.data.dtype, pin_memory=True)
        else:
            from ..transforms import empty_output
            rows = empty_output(shape, self.data.dtype, "cpu")
        out = rows.permute(0, 3, 1, 2)                       # (M, C, H, W), channels-last strides
        self.data.read_into(index.cpu().numpy().astype(np.int64, copy=False), out.numpy())
        return out

    def to(self, device) -> "LazyImageSource":
        """The images stay on disk: only ``"cpu"`` is accepted (augment on the accelerator
        with ``SamplerStream(device=...)``, which ships the gathered uint8 batches)."""
        if torch.device(device).type != "cpu":
            raise ValueError(f"{self.name}/{self.split}: the images are read from disk per episode "
                             f"({self.path}); they cannot be moved to {device}")
        return self


# -- helpers shared by the file-format readers (the torch-free ones: episodes.sources.checks) --
def images_nhwc_to_chw(arr, where: str, key: str) -> torch.Tensor:
    """Validate a uint8 (N, H, W, 3) array and return it as a contiguous uint8 (N, 3, H, W) tensor."""
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        desc = (f"{type(arr).__name__} {getattr(arr, 'dtype', '')} {getattr(arr, 'shape', '')}").strip()
        raise ValueError(f"{where}: '{key}' must be a uint8 array of shape (N, H, W, 3); got {desc}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()
