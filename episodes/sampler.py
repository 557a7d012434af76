"""Seeded N-way K-shot Q-query episode sampling, vectorised over a batch of episodes.

Batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: its random numbers come
from a ``torch.Generator`` seeded with ``batch_seed(seed, e, i)`` (a SplitMix64 hash), so the
same batch comes out of any number of DataLoader workers, in any order, on any machine.

For a batch of ``B`` episodes over a split with ``C`` classes (``n_c`` examples in class c):

1. classes: ``u ~ U[0,1)^{B x C}``; episode b takes the ``N`` classes with the smallest
   ``u[b]`` (a uniformly random N-subset, in random order; label n = n-th chosen class);
2. examples: ``v ~ U[0,1)^{B x N x max_c n_c}`` (entries past ``n_c`` set to +inf); the
   ``K+Q`` smallest entries of ``v[b, n]`` pick examples of class n without replacement:
   the first ``K`` are support, the next ``Q`` query (so support and query are disjoint);
3. one ``index_select`` gathers all ``B*N*(K+Q)`` examples, then the transform runs once on
   the whole batch (per-image randomness from the same generator).  A source read from
   disk (:class:`~episodes.sources.base.LazyImageSource`) reads and decodes exactly these
   examples (``source.gather``), in the producer's process (a DataLoader worker if any).

Examples are ordered class-major inside an episode: ``support_labels[b] = [0]*K + [1]*K + ...``.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .sources.base import FewShotSource
from .types import DeferredBatch, EpisodeBatch, split_batch

__all__ = ["EpisodeSampler", "EpisodeDataset", "EpochKeys", "episode_loader", "epoch_loader", "batch_seed",
           "resolve_transform", "can_defer", "keep_freed_memory"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """63-bit seed of batch ``index`` of ``epoch``: SplitMix64(SplitMix64(SplitMix64(seed) ^ e) ^ i)."""
    h = _splitmix64(int(seed) & _MASK64)
    h = _splitmix64(h ^ (int(epoch) & _MASK64))
    h = _splitmix64(h ^ (int(index) & _MASK64))
    return h >> 1


def _per_split(value, split: str, what: str) -> int:
    if isinstance(value, Mapping):
        if split not in value:
            raise ValueError(f"{what} given per split {dict(value)} but not for split {split!r}")
        value = value[split]
    if isinstance(value, bool) or not isinstance(value, int) and not (hasattr(value, "__index__")):
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    value = int(value)
    if value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value}")
    return value


def resolve_transform(transform, source: FewShotSource) -> Optional[Callable]:
    """``"train"`` / ``"eval"`` -> the dataset's transform; a callable is kept; None = raw data."""
    if transform is None or callable(transform):
        return transform
    from . import transforms as T
    if transform == "train":
        return T.train_transform(source)
    if transform == "eval":
        return T.eval_transform(source)
    raise ValueError(f"transform must be 'train', 'eval', None or a callable, got {transform!r}")


class EpisodeSampler:
    """Draws batches of ``episodes_per_batch`` N-way K-shot Q-query episodes from ``source``.

    ``shot`` and ``query`` may be ints or ``{split: int}`` mappings (e.g. train shot 15,
    test shot 1), resolved with ``source.split``.  ``transform(images, generator=g)`` is
    applied to the gathered batch (``"train"``/``"eval"`` pick the dataset's transform;
    None returns the source's raw data, uint8 images or float vectors).
    """

    def __init__(self, source: FewShotSource, way: int, shot: Union[int, Mapping[str, int]],
                 query: Union[int, Mapping[str, int]], episodes_per_batch: int = 1, seed: int = 0,
                 transform=None):
        self.source = source
        split = getattr(source, "split", "?")
        self.way = _per_split(way, split, "way (N)")
        self.shot = _per_split(shot, split, "shot (K)")
        self.query = _per_split(query, split, "query (Q)")
        self.episodes_per_batch = _per_split(episodes_per_batch, split, "episodes_per_batch (B)")
        self.seed = int(seed)
        self.transform = resolve_transform(transform, source)
        where = f"{source.name}/{split}"
        n_classes = len(source.classes)
        if self.way > n_classes:
            raise ValueError(f"{where}: way N={self.way} exceeds the {n_classes} classes of the split")
        need = self.shot + self.query
        small = source.class_counts < need
        if bool(small.any()):
            c = int(source.classes[small][0])
            raise ValueError(f"{where}: class {c} has {int(source.class_counts[small][0])} examples, fewer than "
                             f"K+Q={self.shot}+{self.query}={need} ({int(small.sum())} such classes)")
        counts = source.class_counts
        self._counts = counts
        self._max = int(counts.max())
        table = torch.zeros(n_classes, self._max, dtype=torch.int64)
        for j, c in enumerate(source.classes.tolist()):
            idx = source.indices_by_class[c]
            table[j, : idx.numel()] = idx
        self._table = table
        self._invalid = torch.arange(self._max)[None, :] >= counts[:, None]      # (C, max)

    def __repr__(self) -> str:
        return (f"EpisodeSampler({self.source.name}/{self.source.split}, way={self.way}, shot={self.shot}, "
                f"query={self.query}, episodes_per_batch={self.episodes_per_batch}, seed={self.seed})")

    def generator(self, epoch: int, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(batch_seed(self.seed, epoch, index))

    def sample_indices(self, epoch: int, index: int, generator: Optional[torch.Generator] = None):
        """Return ``(class_ids (B,N), support_index (B,N*K), query_index (B,N*Q))`` of a batch."""
        g = self.generator(epoch, index) if generator is None else generator
        b, n, k, q = self.episodes_per_batch, self.way, self.shot, self.query
        c = len(self.source.classes)
        keys = torch.rand(b, c, generator=g, dtype=torch.float64)
        cls = keys.topk(n, dim=1, largest=False).indices                             # (B, N) positions
        v = torch.rand(b, n, self._max, generator=g, dtype=torch.float64)
        v.masked_fill_(self._invalid[cls], float("inf"))
        pick = v.topk(k + q, dim=2, largest=False).indices                           # (B, N, K+Q)
        idx = self._table[cls.unsqueeze(-1), pick]
        support = idx[:, :, :k].reshape(b, n * k)
        query = idx[:, :, k:].reshape(b, n * q)
        return self.source.classes[cls], support, query

    def sample(self, epoch: int, index: int) -> EpisodeBatch:
        """Batch ``index`` of ``epoch`` (a pure function of ``(seed, epoch, index)``)."""
        g = self.generator(epoch, index)
        class_ids, support, query = self.sample_indices(epoch, index, generator=g)
        return make_batch(self.source, class_ids, support, query, self.transform, g)

    def sample_deferred(self, epoch: int, index: int, pin_memory: bool = False) -> DeferredBatch:
        """Batch ``index`` of ``epoch`` with the transform not applied: the gathered raw
        examples plus the transform's per-image parameters, drawn from the batch's generator
        exactly as :meth:`sample` draws them (``batch.finish(sampler.transform)`` is
        ``sample(epoch, index)`` up to float32 rounding, on any device).  Ships 1/4 of the
        bytes of a float32 batch; ``pin_memory=True`` gathers straight into pinned memory."""
        if not can_defer(self.transform):
            raise ValueError(f"transform {self.transform!r} cannot be deferred (it needs sample_params(m, "
                             f"generator) and augment(images, params))")
        g = self.generator(epoch, index)
        class_ids, support, query = self.sample_indices(epoch, index, generator=g)
        flat = torch.cat([support.reshape(-1), query.reshape(-1)])
        out = self.source.gather(flat, pin_memory=pin_memory)
        params = None if self.transform is None else self.transform.sample_params(flat.numel(), g)
        s_labels, q_labels = _labels(class_ids.shape[0], self.way, self.shot, self.query)
        return DeferredBatch(out, params, s_labels, q_labels, class_ids, support, query)

    def __iter__(self):
        """Endless batches of epoch 0 (use :func:`episode_loader` for epochs / workers)."""
        i = 0
        while True:
            yield self.sample(0, i)
            i += 1


def make_batch(source: FewShotSource, class_ids: torch.Tensor, support_index: torch.Tensor,
               query_index: torch.Tensor, transform: Optional[Callable] = None,
               generator: Optional[torch.Generator] = None) -> EpisodeBatch:
    """Gather and transform the examples of given episodes (one ``index_select``; a source
    read from disk reads exactly these examples, :meth:`FewShotSource.gather`)."""
    b, n = class_ids.shape
    nk, nq = support_index.shape[1], query_index.shape[1]
    # all support examples first, then all query examples: both halves are contiguous views
    flat = torch.cat([support_index.reshape(-1), query_index.reshape(-1)]).to(source.device)
    if not source.in_memory:
        # the same images in the same order as the in-memory path gathers: same episodes
        x = source.gather(flat)
        if transform is not None:
            x = transform(x, generator=generator)
    elif transform is not None and getattr(transform, "supports_index", False):
        x = transform(source.data, generator=generator, index=flat)     # gathers while transforming
    else:
        from .transforms import empty_output
        x = torch.index_select(source.data, 0, flat,
                               out=empty_output((flat.numel(),) + tuple(source.data.shape[1:]),
                                                source.data.dtype, source.data.device))
        if transform is not None:
            x = transform(x, generator=generator)
    s_labels, q_labels = _labels(b, n, nk // n, nq // n)
    return split_batch(x, s_labels, q_labels, class_ids, support_index, query_index)


def _labels(b: int, n: int, k: int, q: int):
    """(support_labels (B, N*K), query_labels (B, N*Q)): class-major ``[0]*K + [1]*K + ...``."""
    labels = torch.arange(n, dtype=torch.int64)
    return (labels.repeat_interleave(k).expand(b, n * k).contiguous(),
            labels.repeat_interleave(q).expand(b, n * q).contiguous())


def can_defer(transform) -> bool:
    """Whether ``transform`` can be split into parameter drawing and application
    (:meth:`EpisodeSampler.sample_deferred`): None and the built-in transforms can."""
    return transform is None or (callable(getattr(transform, "sample_params", None))
                                 and callable(getattr(transform, "augment", None)))


class EpisodeDataset(Dataset):
    """Map-style dataset of ``n_batches`` batches of one epoch (item i = ``sampler.sample(epoch, i)``).

    Call :meth:`set_epoch` before iterating a DataLoader again for the next epoch.  The epoch
    lives in a shared-memory tensor, so DataLoader workers see it even with
    ``persistent_workers=True``.
    """

    def __init__(self, sampler: EpisodeSampler, n_batches: int, epoch: int = 0, deferred: bool = False):
        self.sampler = sampler
        self.deferred = bool(deferred)      # items are DeferredBatch (sampler.sample_deferred)
        self.n_batches = _per_split(n_batches, "", "n_batches")
        self._epoch = torch.full((1,), int(epoch), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, key) -> EpisodeBatch:
        """``dataset[i]``: batch i of the current epoch; ``dataset[(epoch, i)]``: batch i of
        that epoch (keys from :class:`EpochKeys`: no shared state between processes)."""
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        if not 0 <= i < self.n_batches:
            raise IndexError(i)
        if self.deferred:
            return self.sampler.sample_deferred(epoch, i)
        return self.sampler.sample(epoch, i)


class EpochKeys(Sampler):
    """DataLoader sampler yielding the keys ``(epoch, i)`` for ``i = start .. n_batches - 1``
    of an :class:`EpisodeDataset`; :meth:`set_epoch` before each ``iter(loader)`` (works with
    persistent workers: the keys travel with the requests, the workers hold no epoch)."""

    def __init__(self, n_batches: int, epoch: int = 0, start: int = 0):
        self.n_batches = int(n_batches)
        self.set_epoch(epoch, start)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= int(start) <= self.n_batches:
            raise ValueError(f"start {start} outside 0..{self.n_batches}")
        self.epoch, self.start = int(epoch), int(start)

    def __iter__(self):
        return iter([(self.epoch, i) for i in range(self.start, self.n_batches)])

    def __len__(self) -> int:
        return self.n_batches - self.start


def keep_freed_memory(max_bytes: int = 1 << 30) -> bool:
    """Opt-in, process-wide (glibc only): serve large allocations from the heap and keep up to
    ``max_bytes`` of freed memory mapped (``mallopt(M_MMAP_MAX, 0)``, ``M_TRIM_THRESHOLD``).

    A 5-way 15-shot 6-query batch of 8 episodes at 84x84 is a fresh 71 MB float32 tensor;
    by default glibc maps it with ``mmap`` and every page faults on first touch, which costs
    about as much as the augmentation itself.  With this call, each new batch reuses pages
    freed by the previous one.  Returns False where it is unavailable (non-glibc).
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-4, 0)) and bool(libc.mallopt(-1, int(max_bytes)))   # M_MMAP_MAX, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def _identity(x):
    return x


def episode_loader(source: FewShotSource, way: int, shot, query, episodes_per_batch: int, n_batches: int,
                   seed: int = 0, epoch: int = 0, transform=None, num_workers: int = 0,
                   pin_memory: bool = False, **dataloader_kwargs) -> DataLoader:
    """A ``DataLoader`` yielding ``n_batches`` :class:`EpisodeBatch` es of one epoch.

    Batches do not depend on ``num_workers``; ``pin_memory=True`` pins every tensor of a
    batch.  ``loader.dataset.set_epoch(e)`` switches epochs (also with persistent workers).  Extra keyword arguments go to
    ``torch.utils.data.DataLoader`` (e.g. ``prefetch_factor``, ``persistent_workers``).
    """
    sampler = EpisodeSampler(source, way, shot, query, episodes_per_batch, seed, transform)
    return epoch_loader(sampler, n_batches, epoch, num_workers=num_workers, pin_memory=pin_memory,
                        **dataloader_kwargs)


def epoch_loader(sampler: EpisodeSampler, n_batches: int, epoch: int = 0, start: int = 0, num_workers: int = 0,
                 pin_memory: bool = False, **dataloader_kwargs) -> DataLoader:
    """A ``DataLoader`` over batches ``start .. n_batches - 1`` of ``epoch`` of ``sampler``
    (``start > 0``: where a resumed run continues); with ``start = 0``, ``loader.dataset``
    is the :class:`EpisodeDataset` (``set_epoch``)."""
    dataset = EpisodeDataset(sampler, n_batches, epoch)
    if start:
        dataset = Subset(dataset, range(int(start), dataset.n_batches))
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory, collate_fn=_identity, **dataloader_kwargs)
