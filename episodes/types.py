"""Episode containers shared by the data side and the learning side.

An *episode* is one N-way K-shot Q-query few-shot task: ``N*K`` labelled support
examples and ``N*Q`` query examples whose labels are remapped to ``0..N-1``.
A batch stacks ``B`` episodes along a leading dimension so that a head can solve
all of them at once.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch

__all__ = ["EpisodeBatch"]


@dataclass
class EpisodeBatch:
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

    # -- movement --------------------------------------------------------------
    def _map(self, fn) -> "EpisodeBatch":
        return replace(self, **{f.name: (fn(getattr(self, f.name)) if getattr(self, f.name) is not None else None)
                                for f in fields(self)})

    def to(self, device, non_blocking: bool = False) -> "EpisodeBatch":
        """Move every tensor to ``device`` (labels and indices stay int64)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "EpisodeBatch":
        """Called by ``DataLoader(pin_memory=True)`` for custom batch types."""
        return self._map(lambda t: t.pin_memory())

    def __getitem__(self, item) -> "EpisodeBatch":
        """Select episodes along the batch dimension (``batch[2:4]``)."""
        if isinstance(item, int):
            item = slice(item, item + 1)
        return self._map(lambda t: t[item])
