"""Episode containers shared by the data side and the learning side.

An *episode* is one N-way K-shot Q-query few-shot task: ``N*K`` labelled support
examples and ``N*Q`` query examples whose labels are remapped to ``0..N-1``.
A batch stacks ``B`` episodes along a leading dimension so that a head can solve
all of them at once.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Optional

import torch

__all__ = ["EpisodeBatch", "DeferredBatch"]


class _TensorFields:
    """``to`` / ``pin_memory`` of a dataclass of tensors: each tensor field moves; None and
    the fields named in ``_stay`` stay as they are."""

    _stay: tuple = ()

    def _map(self, fn):
        return replace(self, **{f.name: fn(v) if isinstance(v, torch.Tensor) and f.name not in self._stay else v
                                for f in fields(self) for v in (getattr(self, f.name),)})

    def to(self, device, non_blocking: bool = False):
        """Move every tensor to ``device`` (dtypes unchanged)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        """Called by ``DataLoader(pin_memory=True)`` for custom batch types."""
        return self._map(lambda t: t.pin_memory())


@dataclass
class EpisodeBatch(_TensorFields):
    """A batch of ``B`` episodes.

    Attributes
    ----------
    support:         (B, N*K, C, H, W) images, or (B, N*K, D) vectors.
    support_labels:  (B, N*K) int64 in ``0..N-1``.
    query:           (B, N*Q, C, H, W) or (B, N*Q, D).
    query_labels:    (B, N*Q) int64 in ``0..N-1``.
    class_ids:       (B, N) int64: the source's class id behind each episode label,
                     so ``class_ids[b, support_labels[b, i]]`` is the original class.
    support_index:   (B, N*K) int64 indices into the source (optional; lets a batch
                     be saved as fixed evaluation episodes and reloaded exactly).
    query_index:     (B, N*Q) int64 indices into the source (optional).
    """

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor
    class_ids: torch.Tensor
    support_index: Optional[torch.Tensor] = None
    query_index: Optional[torch.Tensor] = None

    # -- shape helpers -------------------------------------------------------
    @property
    def n_episodes(self) -> int:
        return self.support.shape[0]

    @property
    def n_way(self) -> int:
        return self.class_ids.shape[1]

    @property
    def shot(self) -> int:
        return self.support.shape[1] // self.n_way

    @property
    def query_shot(self) -> int:
        return self.query.shape[1] // self.n_way

    def __getitem__(self, item) -> "EpisodeBatch":
        """Select episodes along the batch dimension (``batch[2:4]``)."""
        if isinstance(item, int):
            item = slice(item, item + 1)
        return self._map(lambda t: t[item])


@dataclass
class DeferredBatch(_TensorFields):
    """A batch of episodes whose transform has not run yet: the gathered raw examples and
    the per-image random parameters the transform drew from the batch's generator
    (``EpisodeSampler.sample_deferred``).  :meth:`finish` applies the transform wherever
    ``images`` lives (e.g. after ``.to("cuda")``) and gives the same :class:`EpisodeBatch`
    as ``EpisodeSampler.sample`` (up to float32 rounding).

    Attributes
    ----------
    images:          (B*N*K + B*N*Q, ...) raw examples (uint8 images or float vectors): all
                     support examples (episode-major, class-major), then all query examples.
    params:          the transform's parameters (e.g. ``transforms.JitterParams``, CPU
                     tensors; they stay on the CPU, the transform ships what it needs) or None.
    support_labels, query_labels, class_ids, support_index, query_index: as in EpisodeBatch.
    """

    _stay = ("params",)   # the transform's parameters stay on the CPU (it ships what it needs)

    images: torch.Tensor
    params: Any
    support_labels: torch.Tensor
    query_labels: torch.Tensor
    class_ids: torch.Tensor
    support_index: Optional[torch.Tensor] = None
    query_index: Optional[torch.Tensor] = None

    @property
    def n_episodes(self) -> int:
        return self.class_ids.shape[0]

    def finish(self, transform=None) -> EpisodeBatch:
        """Apply ``transform`` (``transform.augment(images, params)``; None: raw data) on the
        examples' device and split the result into an :class:`EpisodeBatch`."""
        x = self.images if transform is None else transform.augment(self.images, self.params)
        return split_batch(x, self.support_labels, self.query_labels, self.class_ids, self.support_index,
                           self.query_index)


def split_batch(x: torch.Tensor, support_labels: torch.Tensor, query_labels: torch.Tensor, class_ids: torch.Tensor,
                support_index: Optional[torch.Tensor] = None,
                query_index: Optional[torch.Tensor] = None) -> EpisodeBatch:
    """An :class:`EpisodeBatch` whose support / query are views of ``x`` (all support
    examples first, then all query examples)."""
    b, nk = support_labels.shape
    nq = query_labels.shape[1]
    return EpisodeBatch(support=x[: b * nk].view(b, nk, *x.shape[1:]), support_labels=support_labels,
                        query=x[b * nk:].view(b, nq, *x.shape[1:]), query_labels=query_labels,
                        class_ids=class_ids, support_index=support_index, query_index=query_index)
