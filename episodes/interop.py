"""learn2learn interop (learn2learn is imported lazily).

* :func:`taskset_episodes`: any learn2learn ``TaskDataset`` / ``Taskset`` (e.g. one of
  ``l2l.vision.benchmarks.get_tasksets(...)``) -> iterator of :class:`EpisodeBatch`.
  A learn2learn task is ``(X, y)`` with ``N*(K+Q)`` samples; per label the first ``K``
  samples are support and the next ``Q`` query.  Labels are remapped to ``0..N-1`` by
  sorted task label; ``class_ids`` and ``support_index``/``query_index`` come from the task
  description (``DataDescription.index`` -> ``dataset.indices_to_labels``), so they are
  the original class ids and dataset indices even after ``RemapLabels``.  The examples come
  out as the sampler's ``transform="eval"`` gives them: images normalised float32
  ``(x / 255 - mean) / std`` with the dataset's statistics, vectors float32 (``transform=``
  changes it).
* :func:`benchmark_episodes`: the same for the ``train``/``validation``/``test`` tasksets
  of a ``BenchmarkTasksets`` tuple.
* :func:`to_meta_dataset`: a :class:`FewShotSource` as a learn2learn ``MetaDataset``
  (bookkeeping built from the source's index, no pass over the data).

learn2learn (and gym, qpth) are the ``[l2l]`` extra: ``pip install 'metasparse[l2l]'``.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, Union

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


def _source_of(taskset) -> Optional[FewShotSource]:
    """The source under a taskset built on :func:`to_meta_dataset` (``TaskDataset`` ->
    ``MetaDataset`` -> :class:`SourceDataset`), else None."""
    inner = getattr(getattr(taskset, "dataset", None), "dataset", None)
    return inner.source if isinstance(inner, SourceDataset) else None


def _resolve_transform(transform, taskset, dataset):
    """``(callable or None, is the default normalisation)``; the default is None when the
    dataset is unknown (then only vectors can go through it, see :func:`_apply`)."""
    if transform is None or callable(transform):
        return transform, False
    if transform != "eval":
        raise ValueError(f"transform must be 'eval', None or a callable, got {transform!r}")
    from .transforms import eval_transform
    src = dataset if dataset is not None else _source_of(taskset)
    return (eval_transform(src) if src is not None else None), True


def _apply(x: torch.Tensor, tf, default: bool) -> torch.Tensor:
    """``tf`` applied once to the ``(M, ...)`` examples of a batch, as the sampler applies its
    transform; the default normalisation takes uint8 images (or float vectors) only."""
    if default:
        if x.dim() == 4 and x.dtype != torch.uint8:
            raise ValueError(f"learn2learn task images are {x.dtype}, expected uint8 for transform='eval' (the "
                             f"taskset transforms them itself?): pass transform=None to keep them as they are")
        if tf is None:
            if x.dim() == 4:
                raise ValueError("learn2learn task images are uint8 but their dataset is unknown: pass dataset= "
                                 "(e.g. 'mini-imagenet') for its normalisation, a transform=, or transform=None")
            return x.to(torch.float32)
    return x if tf is None else tf(x)


def _labels_of(taskset) -> Callable[[int], int]:
    i2l = getattr(taskset.dataset, "indices_to_labels", None)
    if i2l is None:
        raise ValueError("taskset.dataset has no indices_to_labels (wrap it in l2l.data.MetaDataset)")

    def labels_of(i: int) -> int:
        lab = i2l[i]
        return int(lab.item() if hasattr(lab, "item") else lab)
    return labels_of


def taskset_episodes(taskset, way: int, shot: int, query: int, episodes_per_batch: int = 1,
                     n_batches: Optional[int] = None, transform="eval",
                     dataset: Union[str, FewShotSource, None] = None) -> Iterator[EpisodeBatch]:
    """Yield :class:`EpisodeBatch` es built from learn2learn tasks.

    With ``taskset.num_tasks == -1`` tasks are sampled afresh (``n_batches`` batches, endless
    if None); otherwise task ``i`` is ``taskset[i]`` (its cached description), in order.

    ``transform``: ``"eval"`` (default) gives what :class:`~episodes.sampler.EpisodeSampler`
    gives with ``transform="eval"``: uint8 images ``(C, H, W)`` as float32
    ``(x / 255 - mean) / std`` (:func:`episodes.transforms.eval_transform`), with the mean /
    std of ``dataset`` (a name such as ``"mini-imagenet"``, or a :class:`FewShotSource`;
    default: the source under a taskset built on :func:`to_meta_dataset`), and vectors as
    float32.  A callable is applied once per batch to the ``(M, ...)`` support and query
    examples together, as the sampler applies its transforms (``transform(images)``); None
    keeps the tensors the taskset gives.  Images that are not uint8 (a taskset that
    transforms them itself, as learn2learn's own benchmarks do) need ``transform=None``.
    """
    for name, v in (("way", way), ("shot", shot), ("query", query), ("episodes_per_batch", episodes_per_batch)):
        if int(v) <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v}")
    labels_of = _labels_of(taskset)
    tf, default = _resolve_transform(transform, taskset, dataset)
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
        b, ns = len(parts), s.shape[1]
        x = _apply(torch.cat([s.flatten(0, 1), q.flatten(0, 1)]), tf, default)   # one call, as the sampler
        s, q = x[: b * ns].unflatten(0, (b, ns)), x[b * ns:].unflatten(0, (b, -1))
        labels = torch.arange(way, dtype=torch.int64)
        yield EpisodeBatch(support=s, support_labels=labels.repeat_interleave(shot).expand(b, -1).contiguous(),
                           query=q, query_labels=labels.repeat_interleave(query).expand(b, -1).contiguous(),
                           class_ids=c, support_index=si, query_index=qi)
        batch_i += 1


def benchmark_episodes(tasksets, way: int, shot: Dict[str, int] | int, query: Dict[str, int] | int,
                       episodes_per_batch: int = 1, n_batches: Optional[int] = None, transform="eval",
                       dataset: Union[str, FewShotSource, None] = None) -> Dict[str, Iterator[EpisodeBatch]]:
    """``{"train", "validation", "test"}`` -> episode iterators of a learn2learn ``BenchmarkTasksets``.

    ``shot`` / ``query`` may be dicts keyed by those names; ``transform`` / ``dataset`` as in
    :func:`taskset_episodes` (learn2learn's ``get_tasksets`` transform their images: pass
    ``transform=None``).
    """
    out = {}
    for name in ("train", "validation", "test"):
        k = shot[name] if isinstance(shot, dict) else shot
        q = query[name] if isinstance(query, dict) else query
        out[name] = taskset_episodes(getattr(tasksets, name), way, k, q, episodes_per_batch, n_batches,
                                     transform=transform, dataset=dataset)
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
    try:
        import learn2learn as l2l
    except ImportError:
        raise ImportError("to_meta_dataset needs learn2learn, not installed: pip install 'metasparse[l2l]' "
                          "(tools/setup_venv.sh builds learn2learn 0.2.0 on Python 3.11)") from None
    labels_to_indices = {int(c): idx.tolist() for c, idx in source.indices_by_class.items()}
    return l2l.data.MetaDataset(SourceDataset(source, transform), labels_to_indices=labels_to_indices)
