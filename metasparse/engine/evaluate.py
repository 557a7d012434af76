"""Meta-testing: per-episode accuracy and feature usage of a model (and optionally a
swapped head) on a re-iterable stream of episode batches.

For episode ``t`` with fitted weights ``W_t`` (d x N) the head reports
``active_t[j] = (W_t[j, :] != 0)``; we keep

* ``accuracy[t]``        fraction of correctly classified queries,
* ``unused_fraction[t]`` = 1 - mean_j active_t[j] (fraction of features with an all-zero row),
* ``feature_usage[j]``   = sum_t active_t[j] (how many tasks use feature j), the paper's
  feature-usage curve is ``sort(feature_usage / n_episodes)`` in decreasing order,
* ``rel_gap[t]``, ``converged[t]`` when the head reports them (``HeadFit.converged``,
  the SVM heads): the summary then has ``max_rel_gap`` and ``unconverged_episodes``, and
  an evaluation in which some episode's solve stopped short of its tolerance ends with
  one :class:`~metasparse.heads.SolverConvergenceWarning`.

Embed once, evaluate many (:func:`embed_episodes`, :func:`evaluate_features`): in eval
mode the features ``f(S_t), f(Q_t)`` of an episode do not depend on the head, so a
comparison of several heads (or several ``lambda_ratio``) on one checkpoint embeds every
episode once into a :class:`FeatureCache` (on the device when it fits in the memory
bound, else in host memory, moved batch by batch) and fits every head on the cached
features: the results are identical to :func:`evaluate_episodes` (same tensors, same
batches). When the features do not fit either bound, :func:`embed_episodes` returns
None and the caller embeds again per head (the result is the same, only slower).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..heads.base import SolverConvergenceWarning, unconverged_message
from ..metrics.accuracy import episode_accuracy, mean_ci
from .distributed import DistContext, gather_objects, shard_bounds

__all__ = ["EvalResult", "evaluate_episodes", "FeatureCache", "embed_episodes", "evaluate_features",
           "feature_cache_budget", "parse_cache_size"]


@dataclass
class EvalResult:
    accuracy: np.ndarray                 # (n_episodes,)
    unused_fraction: np.ndarray          # (n_episodes,)
    feature_usage: np.ndarray            # (d,) number of episodes using each feature
    n_features: int
    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rel_gap: Optional[np.ndarray] = None     # (n_episodes,) when the head reports convergence
    converged: Optional[np.ndarray] = None   # (n_episodes,) bool, idem

    @property
    def n_episodes(self) -> int:
        return int(self.accuracy.size)

    def summary(self) -> Dict[str, Any]:
        acc = mean_ci(self.accuracy)
        used = 1.0 - self.unused_fraction
        return {"accuracy": acc["mean"], "ci95": acc["ci95"], "std": acc["std"], "episodes": acc["n"],
                "features_used_fraction": float(used.mean()), "features_used_ci95": mean_ci(used)["ci95"],
                "features_used_mean": float(used.mean() * self.n_features), "n_features": int(self.n_features),
                "features_never_used": int((self.feature_usage == 0).sum()),
                "loss": float(self.loss.mean()) if self.loss.size else None, **self._convergence_summary()}

    def _convergence_summary(self) -> Dict[str, Any]:
        """``max_rel_gap`` and ``unconverged_episodes``, or nothing for heads that report no convergence."""
        if self.converged is None:
            return {}
        return {"max_rel_gap": float(self.rel_gap.max()), "unconverged_episodes": int((~self.converged).sum())}


@torch.no_grad()
def evaluate_episodes(model: nn.Module, episodes: Iterable, device: torch.device, head: Optional[nn.Module] = None,
                      ctx: Optional[DistContext] = None, progress: bool = True, desc: str = "eval",
                      total: Optional[int] = None) -> EvalResult:
    """Evaluate ``model`` (a :class:`FewShotModel`, eval mode) on ``episodes`` (batches
    ready for the model: the streams of :mod:`metasparse.engine.streams` normalise them).

    With a distributed ``ctx`` every rank takes its shard of each batch and the results are
    gathered in the original episode order, so all ranks return the same result."""
    ctx = ctx or DistContext(device=device)
    model.eval()
    if head is not None:
        head.eval()

    def items():
        for batch in episodes:
            lo, hi = shard_bounds(batch.n_episodes, ctx.rank, ctx.world_size)
            local = batch[lo:hi].to(device, non_blocking=True) if hi > lo else None
            yield batch.n_way, local

    def predict(local, n_way):
        logits, fit = model(local.support, local.support_labels, local.query, n_way, head=head)
        return logits, fit, local.query_labels

    return _evaluate(items(), predict, ctx, progress, desc, total)


def _evaluate(items: Iterable[Tuple[int, Any]], predict: Callable, ctx: DistContext, progress: bool, desc: str,
              total: Optional[int]) -> EvalResult:
    """The evaluation loop: ``items`` yields ``(n_way, local)`` per batch (``local`` None
    when this rank's shard is empty); ``predict(local, n_way) -> (logits, fit, labels)``."""
    accs: List[np.ndarray] = []
    unused: List[np.ndarray] = []
    losses: List[np.ndarray] = []
    gaps: List[np.ndarray] = []
    converged: List[np.ndarray] = []
    usage, tol = None, None
    # disable=None: no bar when stderr is not a terminal (tqdm's convention: no frames in logs)
    bar = tqdm(items, desc=desc, unit="batch", total=total,
               disable=None if (progress and ctx.is_main) else True,
               dynamic_ncols=True, leave=False)
    for n_way, local in bar:
        if local is not None:
            logits, fit, labels = predict(local, n_way)
            acc = episode_accuracy(logits, labels).double().cpu().numpy()
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, n_way).float(), labels.reshape(-1),
                                                   reduction="none").reshape(logits.shape[:2]).mean(1)
            active = fit.active.detach().cpu()
            out = (acc, (1.0 - active.double().mean(1)).numpy(), ce.double().cpu().numpy(),
                   active.sum(0).numpy().astype(np.int64), *_fit_convergence(fit))
            tol = getattr(fit, "tol", None)
        else:
            out = None
        parts = gather_objects(out, ctx)
        for p in parts:
            if p is None:
                continue
            accs.append(p[0]); unused.append(p[1]); losses.append(p[2])
            usage = p[3].copy() if usage is None else usage + p[3]
            if p[5] is not None:
                gaps.append(p[4]); converged.append(p[5])
        if accs:
            bar.set_postfix(acc=f"{100 * np.concatenate(accs).mean():.2f}%",
                            used=f"{100 * (1 - np.concatenate(unused).mean()):.1f}%")
    bar.close()
    if not accs:
        raise ValueError("evaluate: the episode stream was empty")
    res = EvalResult(np.concatenate(accs), np.concatenate(unused), usage, int(usage.size), np.concatenate(losses),
                     np.concatenate(gaps) if converged else None, np.concatenate(converged) if converged else None)
    if ctx.is_main:
        _warn_unconverged(res, tol, desc)
    return res


# ----------------------------------------------------------------------------- feature cache
@dataclass
class FeatureBatch:
    """The features of this rank's shard of one batch of episodes: ``support`` (B, NK, d),
    ``query`` (B, NQ, d) in the model's ``head_dtype``, with their labels."""

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in (self.support, self.support_labels, self.query,
                                                          self.query_labels))

    def to(self, device) -> "FeatureBatch":
        """A copy on ``device`` (asynchronous host -> device only: a device -> host copy must
        be complete before the tensors are read)."""
        device = torch.device(device)
        nb = device.type != "cpu"
        return FeatureBatch(*(t.to(device, non_blocking=nb) for t in (self.support, self.support_labels,
                                                                       self.query, self.query_labels)))


@dataclass
class FeatureCache:
    """Every batch of an episode stream as features: ``batches`` ``[(n_way, FeatureBatch or
    None)]``, stored on ``where`` (the device, or ``cpu`` when only host memory could hold
    them), ``nbytes`` in all."""

    batches: List[Tuple[int, Optional[FeatureBatch]]]
    where: torch.device
    nbytes: int

    def __len__(self) -> int:
        return len(self.batches)


def parse_cache_size(text) -> Optional[int]:
    """``"auto"`` / None -> None (the default bound), ``"off"`` / ``"0"`` -> 0, else a size
    such as ``"512MB"``, ``"8GiB"``, ``"2e9"`` in bytes."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not 0 <= text < float("inf"):
            raise ValueError(f"--feature-cache {text!r}: expected a finite size >= 0")
        return int(text)
    t = str(text).strip().lower().replace(" ", "")
    if t == "auto":
        return None
    if t in ("off", "no", "none", "0"):
        return 0
    units = {"kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40, "kb": 1e3, "mb": 1e6, "gb": 1e9,
             "tb": 1e12, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1}
    for u, f in units.items():
        if t.endswith(u):
            t, factor = t[:-len(u)], f
            break
    else:
        factor = 1
    try:
        value = float(t) * factor
    except ValueError:
        raise ValueError(f"--feature-cache {text!r}: expected auto, off or a size such as 512MB or 8GiB") from None
    if not 0 <= value < float("inf"):
        raise ValueError(f"--feature-cache {text!r}: expected a finite size >= 0")
    return int(value)


def _available_host_bytes() -> int:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):   # pragma: no cover - non-POSIX
        return 2 ** 30


def feature_cache_budget(device: torch.device, max_bytes: Optional[int] = None) -> Tuple[int, int]:
    """``(device bytes, host bytes)`` the cache may take. Default: half the free memory of
    a CUDA device and a quarter of the available host memory (on a CPU device, the host
    bound for both). ``max_bytes`` caps both (0: no cache)."""
    host = _available_host_bytes() // 4
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        dev = free // 2
    else:
        dev = host
    if max_bytes is not None:
        dev, host = min(dev, max_bytes), min(host, max_bytes)
    return int(dev), int(host)


@torch.no_grad()
def embed_episodes(model: nn.Module, episodes, device: torch.device, ctx: Optional[DistContext] = None,
                   max_bytes: Optional[int] = None, progress: bool = True, desc: str = "embed",
                   log: Optional[Callable[[str], None]] = None) -> Optional[FeatureCache]:
    """Embed every episode of ``episodes`` (a re-iterable stream with ``len``) once with
    ``model`` (eval mode): a :class:`FeatureCache` on ``device`` when the features fit in
    its bound (:func:`feature_cache_budget`), else in host memory, else None (``log``
    says why: the caller then embeds per head). The size is estimated from the first
    batch and checked as the cache grows."""
    ctx = ctx or DistContext(device=device)
    model.eval()
    dev_budget, host_budget = feature_cache_budget(device, max_bytes)
    if max(dev_budget, host_budget) <= 0:
        return None
    n_batches = len(episodes)
    where = device
    batches: List[Tuple[int, Optional[FeatureBatch]]] = []
    nbytes = 0
    bar = tqdm(episodes, desc=desc, unit="batch", total=n_batches,
               disable=None if (progress and ctx.is_main) else True,
               dynamic_ncols=True, leave=False)
    for batch in bar:
        lo, hi = shard_bounds(batch.n_episodes, ctx.rank, ctx.world_size)
        fb = None
        if hi > lo:
            local = batch[lo:hi].to(device, non_blocking=True)
            fb = FeatureBatch(model.embed(local.support), local.support_labels, model.embed(local.query),
                              local.query_labels)
            nbytes += fb.nbytes
            if not batches:   # the first batch: estimate the whole cache and choose where it lives
                estimate = fb.nbytes * n_batches
                if estimate > dev_budget:
                    where = torch.device("cpu")
                    if estimate > host_budget:
                        bar.close()
                        if log:
                            log(f"{desc}: the features ({estimate / 1e9:.2f} GB) exceed the feature cache bound "
                                f"({max(dev_budget, host_budget) / 1e9:.2f} GB); embedding the episodes once per "
                                f"head instead (same results, slower)")
                        return None
            if nbytes > (dev_budget if where == device else host_budget):
                bar.close()
                if log:
                    log(f"{desc}: the feature cache outgrew its bound; embedding once per head instead")
                return None
            if where != device:
                fb = fb.to(where)
        batches.append((batch.n_way, fb))
    bar.close()
    return FeatureCache(batches, where, nbytes)


@torch.no_grad()
def evaluate_features(head: nn.Module, cache: FeatureCache, device: torch.device, ctx: Optional[DistContext] = None,
                      progress: bool = True, desc: str = "eval") -> EvalResult:
    """:func:`evaluate_episodes` of a model whose head is ``head`` on the episodes of
    ``cache`` (their features): the same result, without the backbone."""
    ctx = ctx or DistContext(device=device)
    head.eval()

    def items() -> Iterator[Tuple[int, Optional[FeatureBatch]]]:
        for n_way, fb in cache.batches:
            yield n_way, (fb.to(device) if fb is not None and cache.where != device else fb)

    def predict(fb: FeatureBatch, n_way: int):
        out = head.predict(fb.query, fb.support, fb.support_labels, n_way)
        return out.logits, out.fit, fb.query_labels

    return _evaluate(items(), predict, ctx, progress, desc, len(cache))


def _fit_convergence(fit):
    """``(rel_gap, converged)`` of a fit as numpy arrays, ``(None, None)`` if it reports none."""
    if getattr(fit, "converged", None) is None:
        return None, None
    return fit.rel_gap.detach().double().cpu().numpy(), fit.converged.detach().cpu().numpy()


def _warn_unconverged(res: EvalResult, tol: Optional[float], desc: str) -> None:
    """One warning for the evaluation when some episodes' solve stopped short of the tolerance."""
    if res.converged is not None and not res.converged.all():
        warnings.warn(SolverConvergenceWarning(
            f"{desc}: " + unconverged_message(int((~res.converged).sum()), res.n_episodes,
                                               float(res.rel_gap.max()), tol)), stacklevel=2)
