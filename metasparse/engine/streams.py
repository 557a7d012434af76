"""Glue between ``episodes`` samplers and the engine.

* :class:`SamplerStream` - training batches ``iter_epoch(epoch, start)``: batch ``i`` of
  epoch ``e`` is ``sampler.sample(e, i)`` (augmentation included, seeded by the sampler),
  optionally produced by persistent DataLoader workers and/or augmented on the training
  device; starting at ``start`` is how a resumed run continues at the exact sampler
  position.
* :class:`FixedStream` - the evaluation episodes of validation, ``evaluate``, ``compare``
  and the demo: the batches of an ``episodes.fixed.FixedEpisodes`` set (sampled with a
  seed: episode ``t`` is batch ``t`` of epoch 0 of a one-episode sampler, a pure
  function of ``(seed, t)`` independent of the batch size; or loaded from an episodes
  file), normalised for evaluation.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch


__all__ = ["SamplerStream", "FixedStream"]


def _identity(x):
    return x


class SamplerStream:
    """Training batches: batch ``i`` of epoch ``e`` is ``sampler.sample(e, i)``, whoever
    produces it.

    * ``num_workers > 0``: DataLoader workers produce the batches.  One DataLoader with
      persistent workers serves every epoch (the requests carry ``(epoch, i)``:
      :class:`episodes.sampler.EpochKeys`), so workers start once per run, not per epoch;
      ``prefetch_factor`` batches per worker are in flight.
    * ``device`` (e.g. ``cuda``): augmentation on the device.  The producer (a worker, or
      this process) gathers the raw uint8 examples and draws the per-image parameters from
      the batch's generator (``sampler.sample_deferred``: the same random numbers as
      ``sample``); here they are pinned, copied to ``device`` without blocking and
      augmented there (``transform.augment``).  Yields finished batches on ``device``:
      ``batch.to(device)`` in the training loop is then a no-op.  Same episodes, labels and
      indices as CPU augmentation, images equal up to float32 rounding.  Transforms that
      cannot be split (custom callables) fall back to CPU augmentation + a copy.
    * ``pin_memory``: (CPU augmentation) pin each finished batch.
    """

    def __init__(self, sampler, n_batches: int, num_workers: int = 0, pin_memory: bool = False,
                 device=None, prefetch_factor: int = 2):
        from episodes.sampler import can_defer
        self.sampler = sampler
        self.n_batches = int(n_batches)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.device = None if device is None else torch.device(device)
        self.prefetch_factor = int(prefetch_factor)
        self.deferred = self.device is not None and can_defer(sampler.transform)
        self._loader = None
        self._keys = None
        self._generation = 0

    @property
    def _pin_raw(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    def _make_loader(self):
        from torch.utils.data import DataLoader

        from episodes.sampler import EpisodeDataset, EpochKeys
        self._keys = EpochKeys(self.n_batches)
        dataset = EpisodeDataset(self.sampler, self.n_batches, deferred=self.deferred)
        pin = self.pin_memory or self._pin_raw
        self._loader = DataLoader(dataset, batch_size=None, sampler=self._keys, num_workers=self.num_workers,
                                  pin_memory=pin, collate_fn=_identity, persistent_workers=True,
                                  prefetch_factor=self.prefetch_factor)

    def _produced(self, epoch: int, start: int) -> Iterator:
        """The producer's items (EpisodeBatch, or DeferredBatch when ``deferred``), pinned as asked."""
        if self.num_workers == 0:      # in-process: no DataLoader machinery
            for i in range(start, self.n_batches):
                if self.deferred:
                    yield self.sampler.sample_deferred(epoch, i, pin_memory=self._pin_raw)
                else:
                    b = self.sampler.sample(epoch, i)
                    yield b.pin_memory() if self.pin_memory or self._pin_raw else b
            return
        if self._loader is None:
            self._make_loader()
        self._generation += 1
        generation = self._generation
        self._keys.set_epoch(epoch, start)
        it = iter(self._loader)        # persistent workers: re-sends keys, no re-fork
        while True:
            if generation != self._generation:   # the loader's one iterator now serves a later epoch
                raise RuntimeError("SamplerStream: an epoch's iterator was resumed after a later iter_epoch call")
            try:
                item = next(it)
            except StopIteration:
                return
            yield item

    def _finish(self, item):
        if self.device is None:
            return item
        if not self.deferred:          # a transform that cannot be split: augmented on the CPU
            return item.to(self.device, non_blocking=self._pin_raw)
        if self._pin_raw:
            item = item.pin_memory()   # labels / indices (the images are pinned already)
        raw = item.to(self.device, non_blocking=self._pin_raw)
        return raw.finish(self.sampler.transform)

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator:
        """Batches ``start .. n_batches - 1`` of ``epoch`` (``start > 0``: where a resumed run continues)."""
        for item in self._produced(epoch, start):
            yield self._finish(item)

    def close(self) -> None:
        """Stop the persistent workers (also done when the stream is garbage-collected)."""
        loader, self._loader = self._loader, None
        if loader is not None and getattr(loader, "_iterator", None) is not None:
            loader._iterator._shutdown_workers()
            loader._iterator = None


class FixedStream:
    """Re-iterable batches of an ``episodes.fixed.FixedEpisodes`` set (saved or freshly
    sampled), with the evaluation transform of ``source``."""

    def __init__(self, fixed_episodes, source, batch_size: int = 8):
        self.fixed = fixed_episodes
        self.source = source
        self.batch_size = max(1, int(batch_size))
        self.n_episodes = len(fixed_episodes)

    def __len__(self) -> int:
        return math.ceil(self.n_episodes / self.batch_size)

    def __iter__(self):
        yield from self.fixed.batches(self.source, self.batch_size, transform="eval")
