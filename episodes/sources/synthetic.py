"""Synthetic few-shot sources and sparse multi-task generators with a known ground truth.

Data generating process (Lachapelle et al. 2023, Assumption 2; docs/maths.md section 5):

* latent factors ``z in R^m`` (Gaussian, optionally correlated);
* an invertible mixing ``x = g(z)``: ``identity`` (disentangled), ``rotation``
  (random orthogonal ``L``), ``linear`` (random invertible ``L`` with bounded
  condition number) or ``mlp`` (leaky-ReLU layers with well-conditioned square
  weights, inverted layer by layer);
* tasks whose ground-truth predictor is *column sparse*: task ``t`` uses only the
  factors in its support ``S_t``.

Two consumers:

1. Few-shot classification (:func:`make_synthetic_source`): a *world* holds ``C``
   classes; class ``c`` has a mean ``mu_c`` supported on ``l`` of the ``m`` factors
   and examples ``z = mu_c + noise_std * eps``, ``x = g(z)``.  With isotropic noise
   the Bayes classifier of an N-way episode is linear in ``z`` with weights
   ``mu_c / noise_std^2``; logit differences only involve the union of the N
   classes' supports, so it is group sparse in ``z``.  Splits are disjoint class
   sets of the same world (same mixing and class means for a given seed).
2. Sparse multi-task regression / classification (:func:`sample_sparse_tasks`):
   ``y = W_t z + noise`` with ``W_t`` Gaussian on the columns ``S_t`` and zero
   elsewhere (regression), or ``y = argmax(W_t z + temperature * Gumbel)``
   (classification).  Supports are random ``l``-subsets, Bernoulli(p), or unions of
   blocks of a fixed partition (which violates Assumption 7, see
   :func:`satisfies_assumption7`).

This module never imports ``metasparse``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .base import FewShotSource

__all__ = [
    "Mixing", "make_mixing", "SyntheticWorld", "make_synthetic_world", "SyntheticSource",
    "make_synthetic_source", "SparseTasks", "sample_supports", "sample_sparse_tasks",
    "satisfies_assumption7", "SPLITS",
]

SPLITS = ("train", "val", "test")
MIXINGS = ("identity", "rotation", "linear", "mlp")

ArrayLike = Union[np.ndarray, torch.Tensor]


# --------------------------------------------------------------------------- mixing
def _random_orthogonal(m: int, rng: np.random.Generator) -> np.ndarray:
    """Haar-distributed orthogonal matrix (QR of a Gaussian matrix with sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((m, m)))
    return q * np.sign(np.diag(r))[None, :]


def _well_conditioned(m: int, condition: float, rng: np.random.Generator) -> np.ndarray:
    """``U diag(s) V^T`` with Haar ``U, V`` and singular values log-uniform in
    ``[condition^-1/2, condition^1/2]`` (so cond(A) <= condition)."""
    s = np.exp(rng.uniform(-0.5, 0.5, size=m) * np.log(condition))
    return _random_orthogonal(m, rng) @ np.diag(s) @ _random_orthogonal(m, rng).T


@dataclass(frozen=True, eq=False)
class Mixing:
    """An invertible map ``g: R^m -> R^m``.

    ``g(z) = A_L s(A_{L-1} ... s(A_1 z + b_1) ... + b_{L-1}) + b_L`` with ``s`` the
    leaky ReLU of slope ``negative_slope`` (``s^-1(u) = u`` for ``u >= 0``, ``u / slope``
    otherwise), so ``g^-1(x) = A_1^-1 (s^-1(... s^-1(A_L^-1 (x - b_L)) ...) - b_1)``.
    Linear kinds have a single layer and no bias; ``identity`` has none.

    ``g`` and ``g_inverse`` accept numpy arrays or torch tensors of shape (..., m)
    and return the same type and dtype (computed in float64).
    """

    kind: str
    n_factors: int
    weights: Tuple[np.ndarray, ...] = ()
    biases: Tuple[np.ndarray, ...] = ()
    negative_slope: float = 0.2

    @property
    def matrix(self) -> Optional[np.ndarray]:
        """The matrix ``L`` of a linear mixing (``None`` for ``mlp``)."""
        if self.kind == "identity":
            return np.eye(self.n_factors)
        return self.weights[0] if self.kind in ("rotation", "linear") else None

    def _apply(self, v: ArrayLike, inverse: bool) -> ArrayLike:
        is_torch = isinstance(v, torch.Tensor)
        arr = v.detach().cpu().numpy() if is_torch else np.asarray(v)
        if arr.shape[-1] != self.n_factors:
            raise ValueError(f"mixing expects vectors of size {self.n_factors}, got shape {tuple(arr.shape)}")
        out = arr.astype(np.float64)
        n = len(self.weights)
        if not inverse:
            for i, (a, b) in enumerate(zip(self.weights, self.biases)):
                out = out @ a.T + b
                if i < n - 1:
                    out = np.where(out >= 0, out, self.negative_slope * out)
        else:
            for i in reversed(range(n)):
                out = np.linalg.solve(self.weights[i], (out - self.biases[i]).reshape(-1, self.n_factors).T
                                      ).T.reshape(out.shape)
                if i > 0:
                    out = np.where(out >= 0, out, out / self.negative_slope)
        if is_torch:
            return torch.as_tensor(out, dtype=v.dtype, device=v.device)
        return out.astype(arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64)

    def g(self, z: ArrayLike) -> ArrayLike:
        """Observation ``x = g(z)``."""
        return self._apply(z, inverse=False)

    def g_inverse(self, x: ArrayLike) -> ArrayLike:
        """Latent ``z = g^-1(x)``."""
        return self._apply(x, inverse=True)

    __call__ = g

    def __repr__(self) -> str:
        return f"Mixing(kind={self.kind!r}, n_factors={self.n_factors}, layers={len(self.weights)})"


def make_mixing(kind: str, n_factors: int, *, seed: Union[int, np.random.Generator] = 0,
                n_layers: int = 3, negative_slope: float = 0.2, condition: float = 4.0,
                bias_scale: float = 0.1) -> Mixing:
    """Build a random invertible mixing of ``kind`` in {identity, rotation, linear, mlp}.

    ``rotation``: Haar orthogonal ``L`` (ridge regression is invariant to it);
    ``linear``: ``L`` with condition number <= ``condition``;
    ``mlp``: ``n_layers`` square layers, each weight with condition <= ``condition``,
    leaky-ReLU(``negative_slope``) between layers, biases ~ N(0, bias_scale^2).
    """
    if kind not in MIXINGS:
        raise ValueError(f"mixing must be one of {MIXINGS}, got {kind!r}")
    if n_factors < 1:
        raise ValueError(f"n_factors must be >= 1, got {n_factors}")
    if not 0 < negative_slope <= 1:
        raise ValueError(f"negative_slope must be in (0, 1], got {negative_slope}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    m = n_factors
    if kind == "identity":
        return Mixing("identity", m, (np.eye(m),), (np.zeros(m),), negative_slope)
    if kind == "rotation":
        return Mixing("rotation", m, (_random_orthogonal(m, rng),), (np.zeros(m),), negative_slope)
    if kind == "linear":
        return Mixing("linear", m, (_well_conditioned(m, condition, rng),), (np.zeros(m),), negative_slope)
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    weights = tuple(_well_conditioned(m, condition, rng) for _ in range(n_layers))
    biases = tuple(bias_scale * rng.standard_normal(m) for _ in range(n_layers))
    return Mixing("mlp", m, weights, biases, negative_slope)


# --------------------------------------------------------------------------- supports
def _as_support_matrix(supports, m: int) -> np.ndarray:
    """(T, m) bool matrix from a bool array or a list of index collections."""
    if isinstance(supports, torch.Tensor):
        supports = supports.cpu().numpy()
    if isinstance(supports, np.ndarray) and supports.dtype == bool:
        if supports.ndim != 2 or supports.shape[1] != m:
            raise ValueError(f"supports must be a (T, {m}) bool matrix, got shape {supports.shape}")
        return supports
    out = np.zeros((len(supports), m), dtype=bool)
    for t, s in enumerate(supports):
        idx = np.asarray(list(s), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= m):
            raise ValueError(f"support {t} has factor indices outside 0..{m - 1}: {idx.tolist()}")
        out[t, idx] = True
    return out


def satisfies_assumption7(supports, m: int) -> bool:
    """Assumption 7 (sufficient support variability) of Lachapelle et al. 2023.

    For every factor ``j``: ``U_{t : j not in S_t} S_t  =  [m] \\ {j}``, i.e. the
    supports that exclude ``j`` together cover every other factor.  ``supports``:
    a (T, m) bool matrix or a list of index collections.
    """
    s = _as_support_matrix(supports, m)
    for j in range(m):
        covered = s[~s[:, j]].any(axis=0)
        covered[j] = True
        if not covered.all():
            return False
    return True


def sample_supports(n_tasks: int, n_factors: int, *, support_size: Optional[int] = None,
                    support_prob: Optional[float] = None, block_size: int = 1,
                    rng: Union[int, np.random.Generator] = 0) -> np.ndarray:
    """Sample ``n_tasks`` supports as a (T, m) bool matrix.

    Exactly one of ``support_size`` (``l``: uniform ``l``-subsets) or
    ``support_prob`` (each factor independently with probability ``p``; empty
    supports are redrawn) is given.  With ``block_size = b > 1`` the factors are
    partitioned into ``m / b`` consecutive blocks and the draw is made over blocks
    (``l`` must then be a multiple of ``b``): features of a block always co-occur,
    so Assumption 7 fails.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    m = n_factors
    if (support_size is None) == (support_prob is None):
        raise ValueError("give exactly one of support_size (l) or support_prob (p)")
    if block_size < 1 or m % block_size:
        raise ValueError(f"block_size must divide n_factors={m}, got {block_size}")
    n_units = m // block_size
    if support_size is not None:
        if not 1 <= support_size <= m or support_size % block_size:
            raise ValueError(f"support_size must be in 1..{m} and a multiple of block_size={block_size}, "
                             f"got {support_size}")
        k = support_size // block_size
        keys = rng.random((n_tasks, n_units))
        chosen = np.argsort(keys, axis=1)[:, :k]
        units = np.zeros((n_tasks, n_units), dtype=bool)
        np.put_along_axis(units, chosen, True, axis=1)
    else:
        if not 0 < support_prob <= 1:
            raise ValueError(f"support_prob must be in (0, 1], got {support_prob}")
        units = rng.random((n_tasks, n_units)) < support_prob
        empty = ~units.any(axis=1)
        while empty.any():
            units[empty] = rng.random((int(empty.sum()), n_units)) < support_prob
            empty = ~units.any(axis=1)
    return np.repeat(units, block_size, axis=1)


# --------------------------------------------------------------------------- sparse tasks
@dataclass
class SparseTasks:
    """A batch of ``T`` sparse tasks with ``n`` examples each.

    x:        (T, n, m) observations ``g(z)``.
    z:        (T, n, m) latents.
    y:        (T, n, k) float targets (regression) or (T, n) int64 labels (classification).
    weights:  (T, k, m) ground-truth ``W_t`` (zero outside the support columns).
    supports: (T, m) bool ``S_t``.
    mixing:   the :class:`Mixing` used.
    """

    x: torch.Tensor
    z: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor
    supports: torch.Tensor
    mixing: Mixing
    task: str = "regression"

    def split(self, n_first: int) -> Tuple["SparseTasks", "SparseTasks"]:
        """Split every task's examples into the first ``n_first`` and the rest
        (e.g. inner training / outer held-out data)."""
        def part(sl):
            return SparseTasks(self.x[:, sl], self.z[:, sl], self.y[:, sl], self.weights, self.supports,
                               self.mixing, self.task)
        return part(slice(0, n_first)), part(slice(n_first, None))


def sample_sparse_tasks(n_tasks: int, n_samples: int, *, n_factors: int = 10,
                        support_size: Optional[int] = None, support_prob: Optional[float] = None,
                        block_size: int = 1, supports=None, n_outputs: int = 1,
                        mixing: Union[str, Mixing] = "identity", latent_cov: Optional[np.ndarray] = None,
                        noise_std: float = 0.1, task: str = "regression", temperature: float = 0.0,
                        seed: Union[int, np.random.Generator] = 0,
                        dtype: torch.dtype = torch.float32) -> SparseTasks:
    """Draw ``n_tasks`` sparse tasks (Assumption 2 of the paper).

    ``W_t[:, j] ~ N(0, I_k)`` for ``j in S_t`` and 0 otherwise; ``z ~ N(0, latent_cov)``;
    ``x = g(z)``.  Regression: ``y = W_t z + noise_std * eps`` with ``k = n_outputs``.
    Classification (``n_outputs = k >= 2`` classes): ``y = argmax_c (W_t z)_c + temperature * G_c``
    with Gumbel noise ``G`` (``temperature = 0``: noiseless argmax; ``1``: a sample of
    ``softmax(W_t z)``).  ``supports`` overrides the sampled supports ((T, m) bool or
    index lists).  ``mixing`` is a :class:`Mixing` or a kind for :func:`make_mixing`.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    m = n_factors
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
    if task == "classification" and n_outputs < 2:
        raise ValueError(f"classification needs n_outputs (classes) >= 2, got {n_outputs}")
    if n_tasks < 1 or n_samples < 1:
        raise ValueError(f"n_tasks and n_samples must be >= 1, got {n_tasks}, {n_samples}")
    if isinstance(mixing, str):
        mixing = make_mixing(mixing, m, seed=rng)
    if mixing.n_factors != m:
        raise ValueError(f"mixing has {mixing.n_factors} factors but n_factors={m}")
    if supports is None:
        s = sample_supports(n_tasks, m, support_size=support_size, support_prob=support_prob,
                            block_size=block_size, rng=rng)
    else:
        s = _as_support_matrix(supports, m)
        if s.shape[0] != n_tasks:
            raise ValueError(f"got {s.shape[0]} supports for n_tasks={n_tasks}")
    w = rng.standard_normal((n_tasks, n_outputs, m)) * s[:, None, :]
    if latent_cov is None:
        z = rng.standard_normal((n_tasks, n_samples, m))
    else:
        cov = np.asarray(latent_cov, dtype=np.float64)
        if cov.shape != (m, m):
            raise ValueError(f"latent_cov must have shape ({m}, {m}), got {cov.shape}")
        z = rng.standard_normal((n_tasks, n_samples, m)) @ np.linalg.cholesky(cov).T
    x = mixing.g(z)
    signal = np.einsum("tnm,tkm->tnk", z, w)
    if task == "regression":
        y = torch.as_tensor(signal + noise_std * rng.standard_normal(signal.shape), dtype=dtype)
    else:
        gumbel = rng.gumbel(size=signal.shape) if temperature > 0 else 0.0
        y = torch.as_tensor(np.argmax(signal + temperature * gumbel, axis=-1), dtype=torch.int64)
    return SparseTasks(torch.as_tensor(x, dtype=dtype), torch.as_tensor(z, dtype=dtype), y,
                       torch.as_tensor(w, dtype=dtype), torch.as_tensor(s), mixing, task)


# --------------------------------------------------------------------------- few-shot world
@dataclass(frozen=True, eq=False)
class SyntheticWorld:
    """Classes and mixing shared by all splits of one synthetic dataset.

    class_means:    (C, m) float64, row ``c`` supported on ``class_supports[c]``.
    class_supports: tuple of C sorted factor-index tuples (each of size ``l``).
    split_classes:  split -> int64 array of the class ids of that split (disjoint).
    """

    n_factors: int
    factors_per_class: int
    class_means: np.ndarray
    class_supports: Tuple[Tuple[int, ...], ...]
    split_classes: Dict[str, np.ndarray]
    mixing: Mixing
    noise_std: float
    seed: int


@functools.lru_cache(maxsize=32)
def make_synthetic_world(seed: int = 0, n_factors: int = 16, factors_per_class: int = 3,
                         n_classes: Tuple[int, int, int] = (64, 16, 20), mixing: str = "mlp",
                         mean_low: float = 1.0, mean_high: float = 2.0, noise_std: float = 1.0,
                         block_size: int = 1) -> SyntheticWorld:
    """The (cached: same object for same arguments) world behind every split.

    Class ``c``: support ``S_c`` (``l = factors_per_class`` factors, drawn as in
    :func:`sample_supports`), mean ``mu_c[j] = sign_j * U(mean_low, mean_high)`` on
    ``S_c``, zero elsewhere.  Classes ``0..C_train-1`` form ``train``, the next
    ``C_val`` form ``val``, the rest ``test``.
    """
    n_classes = tuple(int(c) for c in n_classes)
    if len(n_classes) != 3 or min(n_classes) < 1:
        raise ValueError(f"n_classes must be three positive counts (train, val, test), got {n_classes}")
    if not 0 < mean_low <= mean_high:
        raise ValueError(f"need 0 < mean_low <= mean_high, got {mean_low}, {mean_high}")
    if noise_std <= 0:
        raise ValueError(f"noise_std must be > 0, got {noise_std}")
    rng = np.random.default_rng([seed, 2023])
    total = sum(n_classes)
    supports = sample_supports(total, n_factors, support_size=factors_per_class, block_size=block_size, rng=rng)
    mags = rng.uniform(mean_low, mean_high, size=(total, n_factors))
    signs = rng.choice([-1.0, 1.0], size=(total, n_factors))
    means = mags * signs * supports
    mix = make_mixing(mixing, n_factors, seed=rng)
    bounds = np.cumsum((0,) + n_classes)
    split_classes = {name: np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i, name in enumerate(SPLITS)}
    class_supports = tuple(tuple(int(j) for j in np.flatnonzero(row)) for row in supports)
    return SyntheticWorld(n_factors, factors_per_class, means, class_supports, split_classes, mix,
                          float(noise_std), int(seed))


class SyntheticSource(FewShotSource):
    """One split of a synthetic few-shot dataset (float32 vectors (n, m)).

    Extra attributes beyond :class:`FewShotSource`:
    latents:        (n, m) float32 ground-truth ``z`` of each example (``data = g(latents)``).
    class_supports: dict class id -> int64 tensor of the factors the class mean uses.
    class_means:    (C_split, m) float32 means (rows follow ``self.classes``).
    mixing:         the :class:`Mixing` (``mixing.g``, ``mixing.g_inverse``).
    world:          the :class:`SyntheticWorld` shared by all splits.
    """

    def __init__(self, data, labels, latents, split: str, world: SyntheticWorld):
        super().__init__(data, labels, split, name="synthetic")
        self.latents = latents
        self.world = world
        self.mixing = world.mixing
        self.class_supports = {int(c): torch.as_tensor(world.class_supports[int(c)], dtype=torch.int64)
                               for c in self.classes}
        self.class_means = torch.as_tensor(world.class_means[self.classes.numpy()], dtype=torch.float32)


def make_synthetic_source(split: str, *, seed: int = 0, n_factors: int = 16, factors_per_class: int = 3,
                          n_classes: Sequence[int] = (64, 16, 20), examples_per_class: int = 100,
                          mixing: str = "mlp", mean_low: float = 1.0, mean_high: float = 2.0,
                          noise_std: float = 1.0, block_size: int = 1) -> SyntheticSource:
    """One split of the synthetic few-shot dataset.

    Examples of class ``c``: ``z = mu_c + noise_std * eps``, ``eps ~ N(0, I_m)``;
    ``x = g(z)`` (float32).  The world (class means, supports, mixing) depends only
    on ``seed`` and the world arguments, never on ``split``; the examples of a split
    depend on ``(seed, split)``.  Defaults: 16 factors, 3 per class, 64/16/20 classes
    (miniImageNet-like), 100 examples per class, MLP mixing.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if examples_per_class < 1:
        raise ValueError(f"examples_per_class must be >= 1, got {examples_per_class}")
    world = make_synthetic_world(int(seed), int(n_factors), int(factors_per_class),
                                 tuple(int(c) for c in n_classes), mixing, float(mean_low), float(mean_high),
                                 float(noise_std), int(block_size))
    classes = world.split_classes[split]
    rng = np.random.default_rng([seed, SPLITS.index(split), 7])
    labels = np.repeat(classes, examples_per_class)
    z = world.class_means[labels] + world.noise_std * rng.standard_normal((labels.size, n_factors))
    x = world.mixing.g(z)
    return SyntheticSource(torch.as_tensor(x, dtype=torch.float32), labels,
                           torch.as_tensor(z, dtype=torch.float32), split, world)
