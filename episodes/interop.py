"""learn2learn interop (learn2learn is imported lazily).

* :func:`taskset_episodes`: any learn2learn ``TaskDataset`` / ``Taskset`` (e.g. one of
  ``l2l.vision.benchmarks.get_tasksets(...)``) -> iterator of :class:`EpisodeBatch`.
  A learn2learn task is ``(X, y)`` with ``N*(K+Q)`` samples; per label the first ``K``
  samples are support and the next ``Q`` query.  Labels are remapped to ``0..N-1`` by
  sorted task label; ``class_ids`` and ``support_index``/``query_index`` come from the task
  description (``DataDescription.index`` -> ``dataset.indices_to_labels``), so they are
  the original class ids and dataset indices even after ``RemapLabels``.
* :func:`benchmark_episodes`: the same for the ``train``/``validation``/``test`` tasksets
  of a ``BenchmarkTasksets`` tuple.
* :func:`to_meta_dataset`: a :class:`FewShotSource` as a learn2learn ``MetaDataset``
  (bookkeeping built from the source's index, no pass over the data).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional

import torch
from torch.utils.data import Dataset

from .sources.base import FewShotSource
from .types import EpisodeBatch

__all__ = ["taskset_episodes", "benchmark_episodes", "to_meta_dataset", "SourceDataset"]


def _task_to_episode(x: torch.Tensor, y: torch.Tensor, indices, labels_of, way: int, shot: int, query: int):
    y = torch.as_tensor(y).reshape(-1)
    uniq, inv = torch.unique(y, sorted=True, return_inverse=True)
    if uniq.numel() != way:
        raise ValueError(f"learn2learn task has {uniq.numel()} classes, expected way={way}")
    order, counts = [], []
    for n in range(way):
        pos = (inv == n).nonzero().reshape(-1)
        counts.append(pos.numel())
        if pos.numel() != shot + query:
            raise ValueError(f"learn2learn task has {pos.numel()} samples of one class, expected "
                             f"shot+query={shot}+{query}={shot + query} (use KShots(k=shot+query))")
        order.append(pos)
    order = torch.stack(order)                                       # (N, K+Q) positions in the task
    s_pos, q_pos = order[:, :shot].reshape(-1), order[:, shot:].reshape(-1)
    x = torch.as_tensor(x)
    if indices is not None:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        class_ids = torch.tensor([labels_of(int(idx[order[n, 0]])) for n in range(way)], dtype=torch.int64)
        s_idx, q_idx = idx[s_pos], idx[q_pos]
    else:
        class_ids, s_idx, q_idx = uniq.to(torch.int64), None, None
    return x[s_pos], x[q_pos], class_ids, s_idx, q_idx


def _labels_of(taskset) -> Callable[[int], int]:
    i2l = getattr(taskset.dataset, "indices_to_labels", None)
    if i2l is None:
        raise ValueError("taskset.dataset has no indices_to_labels (wrap it in l2l.data.MetaDataset)")

    def labels_of(i: int) -> int:
        lab = i2l[i]
        return int(lab.item() if hasattr(lab, "item") else lab)
    return labels_of


def taskset_episodes(taskset, way: int, shot: int, query: int, episodes_per_batch: int = 1,
                     n_batches: Optional[int] = None) -> Iterator[EpisodeBatch]:
    """Yield :class:`EpisodeBatch` es built from learn2learn tasks.

    With ``taskset.num_tasks == -1`` tasks are sampled afresh (``n_batches`` batches, endless
    if None); otherwise task ``i`` is ``taskset[i]`` (its cached description), in order.
    """
    for name, v in (("way", way), ("shot", shot), ("query", query), ("episodes_per_batch", episodes_per_batch)):
        if int(v) <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v}")
    labels_of = _labels_of(taskset)
    finite = getattr(taskset, "num_tasks", -1) != -1
    total = taskset.num_tasks if finite else None
    task_i, batch_i = 0, 0
    while n_batches is None or batch_i < n_batches:
        parts = []
        for _ in range(episodes_per_batch):
            if finite and task_i >= total:
                break
            if finite:
                x, y = taskset[task_i]
                desc = taskset.sampled_descriptions[task_i]
            else:
                desc = taskset.sample_task_description()
                x, y = taskset.get_task(desc)
            task_i += 1
            indices = [dd.index for dd in desc]
            parts.append(_task_to_episode(x, y, indices, labels_of, way, shot, query))
        if not parts:
            return
        s, q, c, si, qi = (torch.stack(t) for t in zip(*parts))
        b = len(parts)
        labels = torch.arange(way, dtype=torch.int64)
        yield EpisodeBatch(support=s, support_labels=labels.repeat_interleave(shot).expand(b, -1).contiguous(),
                           query=q, query_labels=labels.repeat_interleave(query).expand(b, -1).contiguous(),
                           class_ids=c, support_index=si, query_index=qi)
        batch_i += 1


def benchmark_episodes(tasksets, way: int, shot: Dict[str, int] | int, query: Dict[str, int] | int,
                       episodes_per_batch: int = 1, n_batches: Optional[int] = None) -> Dict[str, Iterator[EpisodeBatch]]:
    """``{"train", "validation", "test"}`` -> episode iterators of a learn2learn ``BenchmarkTasksets``.

    ``shot`` / ``query`` may be dicts keyed by those names.
    """
    out = {}
    for name in ("train", "validation", "test"):
        k = shot[name] if isinstance(shot, dict) else shot
        q = query[name] if isinstance(query, dict) else query
        out[name] = taskset_episodes(getattr(tasksets, name), way, k, q, episodes_per_batch, n_batches)
    return out


class SourceDataset(Dataset):
    """``(transform(example), class id)`` items of a source (a plain torch Dataset)."""

    def __init__(self, source: FewShotSource, transform: Optional[Callable] = None):
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        x = self.source.data[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.source.labels[i])


def to_meta_dataset(source: FewShotSource, transform: Optional[Callable] = None):
    """Expose ``source`` as a ``learn2learn.data.MetaDataset`` (items ``(image/vector, class id)``;
    ``transform`` is applied per item, e.g. a per-image torchvision pipeline)."""
    import learn2learn as l2l
    labels_to_indices = {int(c): idx.tolist() for c, idx in source.indices_by_class.items()}
    return l2l.data.MetaDataset(SourceDataset(source, transform), labels_to_indices=labels_to_indices)
