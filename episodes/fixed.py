"""Fixed evaluation episodes: save the exact tasks (class ids + example indices) and load them back.

Two heads or two checkpoints evaluated on the same file see identical episodes.  A file
stores, for E episodes of an N-way K-shot Q-query problem on one split:

* ``class_ids`` (E, N), ``support_index`` (E, N*K), ``query_index`` (E, N*Q) (int64; indices
  into the split's source, support/query class-major as produced by the sampler);
* metadata: ``dataset``, ``split``, ``way``, ``shot``, ``query``, ``n_examples`` (size of the
  split) and ``labels_sha1`` (SHA-1 of the split's int64 label vector), so loading against a
  different source fails with a clear error instead of silently evaluating other tasks.

Formats by extension: ``.json`` (portable, human-readable) or ``.pt`` (``torch.save`` of a
dict of tensors; loaded with ``weights_only=True``).  Writes are atomic (temp + ``os.replace``).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import torch

from .atomic import atomic_write
from .sampler import EpisodeSampler, make_batch, resolve_transform
from .sources.base import FewShotSource
from .types import EpisodeBatch

__all__ = ["FixedEpisodes", "sample_fixed_episodes", "save_episodes", "load_episodes", "labels_fingerprint"]

FORMAT = "metasparse-episodes/1"


def labels_fingerprint(source: FewShotSource) -> str:
    return hashlib.sha1(source.labels.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


@dataclass
class FixedEpisodes:
    dataset: str
    split: str
    way: int
    shot: int
    query: int
    class_ids: torch.Tensor        # (E, N)
    support_index: torch.Tensor    # (E, N*K)
    query_index: torch.Tensor      # (E, N*Q)
    n_examples: int
    labels_sha1: str

    def __len__(self) -> int:
        return self.class_ids.shape[0]

    @classmethod
    def from_batches(cls, batches: Iterable[EpisodeBatch], source: FewShotSource) -> "FixedEpisodes":
        """Collect the indices of already sampled batches (they must carry support/query indices)."""
        batches = list(batches)
        if not batches or any(b.support_index is None or b.query_index is None for b in batches):
            raise ValueError("FixedEpisodes.from_batches needs batches with support_index and query_index")
        b0 = batches[0]
        return cls(source.name, source.split, b0.n_way, b0.shot, b0.query_shot,
                   torch.cat([b.class_ids for b in batches]), torch.cat([b.support_index for b in batches]),
                   torch.cat([b.query_index for b in batches]), len(source), labels_fingerprint(source))

    def validate(self, where: str = "episodes") -> None:
        """Raise ValueError unless every index is in ``0..n_examples-1``, the classes of an
        episode are distinct and no example is used twice in an episode (support and query
        disjoint: a query example in the support set would leak its label)."""
        for key in ("support_index", "query_index"):
            idx = getattr(self, key)
            bad = ((idx < 0) | (idx >= self.n_examples)).any(dim=1)
            if bool(bad.any()):
                e = int(bad.nonzero()[0])
                raise ValueError(f"{where}: episode {e}: {key} has indices outside 0..{self.n_examples - 1} "
                                 f"(the split's examples)")
        e = _first_duplicate(self.class_ids)
        if e >= 0:
            raise ValueError(f"{where}: episode {e} lists a class twice in class_ids")
        e = _first_duplicate(torch.cat([self.support_index, self.query_index], dim=1))
        if e >= 0:
            raise ValueError(f"{where}: episode {e} uses an example twice (support and query must be disjoint "
                             f"sets of distinct examples; a query example in the support set leaks its label)")

    def check(self, source: FewShotSource, where: str = "episodes") -> None:
        """Raise ValueError unless these episodes were drawn from ``source``: same split
        (size and labels), valid indices, and each support / query block of the class
        its ``class_ids`` entry names (class-major order)."""
        mine = f"{self.dataset}/{self.split} (n={self.n_examples})"
        theirs = f"{source.name}/{source.split} (n={len(source)})"
        if (self.dataset, self.split, self.n_examples) != (source.name, source.split, len(source)):
            raise ValueError(f"{where}: episodes were saved for {mine}, not {theirs}")
        if self.labels_sha1 != labels_fingerprint(source):
            raise ValueError(f"{where}: episodes were saved for a {mine} split with different labels than "
                             f"the loaded {theirs} (labels_sha1 mismatch)")
        self.validate(where)
        n_eps, way = self.class_ids.shape
        for key, per in (("support_index", self.shot), ("query_index", self.query)):
            labels = source.labels[getattr(self, key)].reshape(n_eps, way, per)
            bad = (labels != self.class_ids[:, :, None]).any(dim=2).any(dim=1)
            if bool(bad.any()):
                e = int(bad.nonzero()[0])
                raise ValueError(f"{where}: episode {e}: the examples of {key} are not of the classes class_ids "
                                 f"lists, in its order ({per} per class, class-major)")

    def batches(self, source: FewShotSource, episodes_per_batch: int, transform=None,
                seed: int = 0) -> Iterator[EpisodeBatch]:
        """Yield the episodes in order, ``episodes_per_batch`` at a time (last batch may be smaller).

        ``transform`` as in :class:`EpisodeSampler` (``"eval"`` for normalisation); a random
        transform gets a generator seeded from ``(seed, batch index)``.
        """
        self.check(source)
        fn: Optional[Callable] = resolve_transform(transform, source)
        from .sampler import batch_seed
        for i, lo in enumerate(range(0, len(self), episodes_per_batch)):
            sl = slice(lo, lo + episodes_per_batch)
            g = torch.Generator().manual_seed(batch_seed(seed, -1, i))
            yield make_batch(source, self.class_ids[sl], self.support_index[sl], self.query_index[sl], fn, g)


def sample_fixed_episodes(source: FewShotSource, way: int, shot: int, query: int, n_episodes: int,
                          seed: int = 0) -> FixedEpisodes:
    """Draw ``n_episodes`` episodes (episode e = batch e of epoch 0 of a 1-episode sampler)."""
    sampler = EpisodeSampler(source, way, shot, query, episodes_per_batch=1, seed=seed)
    if int(n_episodes) <= 0:
        raise ValueError(f"n_episodes must be a positive integer, got {n_episodes}")
    parts = [sampler.sample_indices(0, e) for e in range(int(n_episodes))]
    return FixedEpisodes(source.name, source.split, sampler.way, sampler.shot, sampler.query,
                         torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                         torch.cat([p[2] for p in parts]), len(source), labels_fingerprint(source))


_META = ("dataset", "split", "way", "shot", "query", "n_examples", "labels_sha1")
_ARRAYS = ("class_ids", "support_index", "query_index")


def save_episodes(path, episodes: FixedEpisodes) -> None:
    """Write ``episodes`` to ``path`` (``.json`` or ``.pt``), atomically."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    meta = {k: getattr(episodes, k) for k in _META}
    if ext == ".json":
        doc = {"format": FORMAT, **meta, **{k: getattr(episodes, k).tolist() for k in _ARRAYS}}
        atomic_write(path, lambda f: f.write(json.dumps(doc, separators=(",", ":")).encode()))
    elif ext == ".pt":
        doc = {"format": FORMAT, **meta, **{k: getattr(episodes, k).to(torch.int64) for k in _ARRAYS}}
        atomic_write(path, lambda f: torch.save(doc, f))
    else:
        raise ValueError(f"{path}: episode files must end in .json or .pt")


def load_episodes(path, source: Optional[FewShotSource] = None) -> FixedEpisodes:
    """Read an episode file; with ``source``, also check that it matches (else ValueError)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, not an episode file (.json or .pt)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: episode file not found")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".json":
            with open(path, "rb") as f:
                doc = json.loads(f.read().decode())
        elif ext == ".pt":
            try:
                doc = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:   # torch's message would suggest weights_only=False: never for these
                raise ValueError(f"{path}: not a readable episode file (it holds objects other than tensors, "
                                 f"numbers, strings and containers; refused without running them)") from None
        else:
            raise ValueError(f"{path}: episode files must end in .json or .pt")
    except (json.JSONDecodeError, UnicodeDecodeError, RuntimeError, EOFError, OSError, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith(f"{path}: "):
            raise
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable episode file ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or any(k not in doc for k in _META + _ARRAYS):
        raise ValueError(f"{path}: not a {FORMAT} file (expected keys {list(_META + _ARRAYS)})")
    for k in ("dataset", "split", "labels_sha1"):
        if not isinstance(doc[k], str):
            raise ValueError(f"{path}: '{k}' must be a string, got {doc[k]!r}")
    for k in ("way", "shot", "query", "n_examples"):
        if isinstance(doc[k], bool) or not isinstance(doc[k], int) or doc[k] < 1:
            raise ValueError(f"{path}: '{k}' must be an integer >= 1, got {doc[k]!r}")
    arrays = {k: _index_array(doc[k], path, k) for k in _ARRAYS}
    ep = FixedEpisodes(**{k: doc[k] for k in _META}, **arrays)
    e, n = ep.class_ids.shape if ep.class_ids.dim() == 2 else (-1, -1)
    if (n != ep.way or ep.support_index.shape != (e, n * ep.shot) or ep.query_index.shape != (e, n * ep.query)):
        raise ValueError(f"{path}: array shapes {tuple(ep.class_ids.shape)}, {tuple(ep.support_index.shape)}, "
                         f"{tuple(ep.query_index.shape)} do not match way={ep.way} shot={ep.shot} query={ep.query}")
    if e == 0:
        raise ValueError(f"{path}: the file holds no episodes")
    ep.validate(path)
    if source is not None:
        ep.check(source, where=path)
    return ep


def _index_array(value, path: str, key: str) -> torch.Tensor:
    """``value`` (a JSON list or a tensor) as an int64 tensor; floats, strings, ragged lists refused."""
    try:
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        t = None
    if t is None or t.dtype in (torch.bool,) or t.is_floating_point() or t.is_complex():
        if t is not None and t.numel() == 0:
            return t.to(torch.int64)
        raise ValueError(f"{path}: '{key}' must be a rectangular array of integers")
    return t.to(torch.int64)


def _first_duplicate(rows: torch.Tensor) -> int:
    """Index of the first row of ``rows`` (E, M) holding a value twice, or -1."""
    s = rows.sort(dim=1).values
    dup = (s[:, 1:] == s[:, :-1]).any(dim=1)
    return int(dup.nonzero()[0]) if bool(dup.any()) else -1
