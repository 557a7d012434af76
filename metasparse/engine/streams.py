"""Glue between ``episodes`` samplers and the engine.

* :class:`SamplerStream` - training batches ``iter_epoch(epoch, start)``: batch ``i`` of
  epoch ``e`` is ``sampler.sample(e, i)`` (augmentation included, seeded by the sampler),
  optionally produced by DataLoader workers; starting at ``start`` is how a resumed run
  continues at the exact sampler position.
* :class:`EvalEpisodes` - a re-iterable, fixed set of evaluation episodes: episode ``t``
  is ``sampler.sample(0, t)`` of a one-episode sampler, i.e. a pure function of
  ``(seed, t)``, independent of the evaluation batch size, so two heads or checkpoints
  evaluated with the same seed see identical tasks.
* :class:`FixedStream` - the batches of an ``episodes.fixed.FixedEpisodes`` set (sampled
  with a seed, or loaded from an episodes file), normalised for evaluation.
"""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Subset

__all__ = ["SamplerStream", "EvalEpisodes", "FixedStream", "cat_batches"]


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
    def __init__(self, sampler, n_batches: int, num_workers: int = 0, pin_memory: bool = False):
        self.sampler = sampler
        self.n_batches = int(n_batches)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator:
        if self.num_workers == 0:
            for i in range(start, self.n_batches):
                b = self.sampler.sample(epoch, i)
                yield b.pin_memory() if self.pin_memory else b
            return
        from episodes.sampler import EpisodeDataset
        ds = EpisodeDataset(self.sampler, self.n_batches, epoch)
        loader = DataLoader(Subset(ds, range(start, self.n_batches)), batch_size=None, shuffle=False,
                            num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=_identity)
        yield from loader


class EvalEpisodes:
    """``n_episodes`` fixed episodes from a one-episode-per-batch sampler, yielded in batches."""

    def __init__(self, sampler, n_episodes: int, batch_size: int = 8):
        if getattr(sampler, "episodes_per_batch", 1) != 1:
            raise ValueError("EvalEpisodes needs a sampler with episodes_per_batch=1")
        if n_episodes < 1:
            raise ValueError(f"number of episodes must be >= 1, got {n_episodes}")
        self.sampler = sampler
        self.n_episodes = int(n_episodes)
        self.batch_size = max(1, int(batch_size))

    def __len__(self) -> int:
        return math.ceil(self.n_episodes / self.batch_size)

    def __iter__(self):
        for lo in range(0, self.n_episodes, self.batch_size):
            hi = min(lo + self.batch_size, self.n_episodes)
            yield cat_batches([self.sampler.sample(0, t) for t in range(lo, hi)])


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
