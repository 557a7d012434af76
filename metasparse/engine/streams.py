"""Glue between ``episodes`` samplers and the engine.

* :class:`SamplerStream` - training batches ``iter_epoch(epoch, start)``: batch ``i`` of
  epoch ``e`` is ``sampler.sample(e, i)`` (augmentation included, seeded by the sampler),
  optionally produced by DataLoader workers; starting at ``start`` is how a resumed run
  continues at the exact sampler position.
* :class:`FixedStream` - the evaluation episodes of validation, ``evaluate``, ``compare``
  and the demo: the batches of an ``episodes.fixed.FixedEpisodes`` set (sampled with a
  seed: episode ``t`` is batch ``t`` of epoch 0 of a one-episode sampler, a pure
  function of ``(seed, t)`` independent of the batch size; or loaded from an episodes
  file), normalised for evaluation.
"""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Iterator, Sequence

import torch

from episodes.sampler import epoch_loader

__all__ = ["SamplerStream", "FixedStream", "cat_batches"]


def cat_batches(batches: Sequence):
    """Concatenate EpisodeBatch objects along the episode dimension."""
    first = batches[0]
    kw = {}
    for f in fields(first):
        vals = [getattr(b, f.name) for b in batches]
        kw[f.name] = None if any(v is None for v in vals) else torch.cat(vals, 0)
    return type(first)(**kw)


def _identity(x):
    return x


class SamplerStream:
    """Training batches: batch ``i`` of epoch ``e`` is ``sampler.sample(e, i)``; with
    ``num_workers > 0`` they come from :func:`episodes.sampler.epoch_loader`."""

    def __init__(self, sampler, n_batches: int, num_workers: int = 0, pin_memory: bool = False):
        self.sampler = sampler
        self.n_batches = int(n_batches)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator:
        if self.num_workers == 0:      # in-process: no DataLoader machinery
            for i in range(start, self.n_batches):
                b = self.sampler.sample(epoch, i)
                yield b.pin_memory() if self.pin_memory else b
            return
        yield from epoch_loader(self.sampler, self.n_batches, epoch, start, num_workers=self.num_workers,
                                pin_memory=self.pin_memory)


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
