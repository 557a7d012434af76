r"""Published baseline heads, run on the same features as metasparse's heads.

Every baseline is a function

    head(query (B, nq, d), support (B, n, d), support_labels (B, n) int64, n_way, **options)
        -> (logits (B, nq, n_way), W (B, d, n_way))

differentiable w.r.t. ``query`` and ``support`` (forward + backward of a loss on the
logits is what ``scripts/bench_heads.py`` times).  ``logits = query @ W`` up to
rounding; no learnable scale is applied (multiply by the head's scale yourself).

* :func:`metaoptnet_svm_cs` -- MetaOptNet's SVM-CS head (Lee et al., CVPR 2019):
  the Crammer-Singer dual QP solved by qpth's batched interior-point ``QPFunction``.
* :func:`paper_pgd_head` -- the group-Lasso multiclass SVM head of Lachapelle et al.
  (ICML 2023): fixed-step projected gradient on the smoothed dual for a fixed number
  of steps, implicit differentiation with ``torchopt.diff.implicit.custom_root``
  (needs the optional ``torchopt``: ``pip install metasparse[bench]``).
* :func:`exact_solution` / :func:`relative_w_error` -- the reference ``W*`` (our
  solver in float64 at a tight duality-gap tolerance, with a certified error bound)
  and the per-episode relative error of a baseline's ``W``.

Notation (one episode): X (n x d) support features, Y (n x k) one-hot labels,
Delta = 1 - Y, W (d x k).  The problem is

    P(W) = sum_i l_i(x_i^T W) + lambda1 ||W||_{2,1} + lambda2/2 ||W||_F^2,

l_i the Crammer-Singer hinge smoothed by ``dual_reg = rho``; its dual is

    max_{Lam rows in simplex} <Lam, Delta> - 1/(2 lambda2) sum_j max(0, ||V_j|| - lambda1)^2
                              - rho/(2 lambda2) ||Lam - Y||^2,      V = X^T (Y - Lam),

with ``W* = BST_rows(X^T (Y - Lam*), lambda1) / lambda2``.  ``lambda1 = lambda_ratio *
lambda_max`` per episode (``lambda_max`` from :func:`metasparse.solvers.lambda_max`,
a constant for the backward pass), or an absolute ``lambda1``.

Import as ``from head_baselines import ...`` with ``scripts/`` on ``sys.path``.
"""
from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Optional, Tuple

import torch

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if _ROOT not in sys.path:   # run from a checkout without `pip install -e .`
    sys.path.insert(0, _ROOT)
from metasparse.solvers import GroupSparseSVMDual  # noqa: E402
from metasparse.solvers import lambda_max as _lambda_max  # noqa: E402
from metasparse.solvers.objectives import one_hot, row_norms  # noqa: E402
from metasparse.solvers.simplex import project_simplex  # noqa: E402

__all__ = ["metaoptnet_svm_cs", "paper_pgd_head", "exact_solution", "relative_w_error",
           "TORCHOPT_HINT"]

TORCHOPT_HINT = "paper_pgd_head needs torchopt: pip install metasparse[bench]"

# torchopt 0.7.3's custom_root calls functorch.vjp, deprecated (but working) in torch 2.x
warnings.filterwarnings("ignore", message=r".*functorch\.vjp.* is deprecated", category=FutureWarning)


# ----------------------------------------------------------------------------- checks
def _check(query, support, support_labels, n_way):
    if support.dim() != 3 or (query is not None and (query.dim() != 3 or query.shape[0] != support.shape[0]
                                                     or query.shape[2] != support.shape[2])):
        raise ValueError(f"expected query (B, nq, d) and support (B, n, d), got "
                         f"{None if query is None else tuple(query.shape)} and {tuple(support.shape)}")
    if support_labels.shape != support.shape[:2]:
        raise ValueError(f"support_labels: expected shape {tuple(support.shape[:2])}, got "
                         f"{tuple(support_labels.shape)}")
    if int(n_way) < 2:
        raise ValueError(f"n_way: expected >= 2, got {n_way}")


def _lambda1(support, Y, lambda_ratio, lambda1, lambda2, dual_reg):
    """Per-episode lambda1 (B,), detached: ``lambda_ratio * lambda_max`` or the absolute value."""
    B = support.shape[0]
    if lambda1 is not None:
        if lambda_ratio not in (None, 0, 0.0):
            raise ValueError("give lambda_ratio or lambda1, not both")
        l1 = torch.as_tensor(lambda1, dtype=support.dtype, device=support.device)
        return l1.expand(B).clone() if l1.dim() == 0 else l1.detach().clone()
    ratio = float(lambda_ratio or 0.0)
    if ratio < 0 or not math.isfinite(ratio):
        raise ValueError(f"lambda_ratio: expected a finite value >= 0, got {lambda_ratio}")
    if ratio == 0.0:
        return torch.zeros(B, dtype=support.dtype, device=support.device)
    lmax, _ = _lambda_max(support.detach(), Y, float(lambda2), float(dual_reg), cpu_threads=None)
    return ratio * lmax


# ------------------------------------------------------------------ MetaOptNet SVM-CS
def _block_kron_identity(K: torch.Tensor, k: int) -> torch.Tensor:
    """``K (x) I_k`` per episode, (B, n*k, n*k), index ``i*k + l`` (MetaOptNet's
    ``batched_kronecker(K, I)``)."""
    B, n, m = K.shape
    eye = torch.eye(k, dtype=K.dtype, device=K.device)
    return (K[:, :, None, :, None] * eye[None, None, :, None, :]).reshape(B, n * k, m * k)


def _qpth_cpu_lu_workaround() -> None:
    r"""Make qpth's batched LU factorisations safe on a multi-threaded CPU.

    With torch 2.14.1 on CPU, a *batched* ``torch.linalg.lu_factor`` (and so
    ``torch.linalg.solve``) with more than one intra-op thread returns corrupt pivots
    for matrices of size >= ~200 (e.g. 15-shot 5-way: n*k = 375), and qpth then fails
    with "Pivots given to lu_solve must all be greater or equal to 1".  qpth factorises
    everything through ``qpth.solvers.pdipm.batch.lu_hack``; this wraps it so that, on
    CPU with several threads, each episode is factorised on its own (same LU, exact
    same arithmetic per episode).  CUDA and single-threaded calls are untouched.
    """
    from qpth.solvers.pdipm import batch as pdipm_b
    if getattr(pdipm_b.lu_hack, "_metasparse_safe", False):
        return
    original = pdipm_b.lu_hack

    def lu_hack(x):
        if x.is_cuda or x.dim() != 3 or x.shape[0] == 1 or torch.get_num_threads() == 1:
            return original(x)
        parts = [torch.linalg.lu_factor(x[i:i + 1]) for i in range(x.shape[0])]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    lu_hack._metasparse_safe = True
    pdipm_b.lu_hack = lu_hack


def metaoptnet_svm_cs(query: torch.Tensor, support: torch.Tensor, support_labels: torch.Tensor,
                      n_way: int, C_reg: float = 0.1, max_iter: int = 15,
                      double_precision: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""MetaOptNet's SVM-CS head: qpth's batched ``QPFunction`` on the Crammer-Singer dual.

    Follows ``MetaOptNetHead_SVM_CS`` in ``models/classification_heads.py`` of
    github.com/kjunelee/MetaOptNet (defaults ``C_reg=0.1``, ``maxIter=15``: its train.py
    calls the head with the default; its test.py passes ``maxIter=3`` at meta-test).
    One QP per episode, all ``B`` episodes in one ``QPFunction`` call:

        min_a  1/2 a^T (K (x) I_k + I) a - a^T y
        s.t.   a <= C y              (G = I_{nk}, h = C_reg * y)
               sum_l a_il = 0        (A = I_n (x) 1_k^T, b = 0)

    with ``K = X X^T`` (n x n), ``a`` and ``y`` the (n x k) dual variables and one-hot
    labels flattened sample-major (index ``i*k + l``); the ``+ I`` is MetaOptNet's
    ("helps avoid PSD error from the QP solver") and is exactly the smoothing
    ``rho = 1`` of our dual: ``a = C_reg (Y - Lam)``, ``lambda2 = 1/C_reg``,
    ``dual_reg = 1``, ``lambda1 = 0``.  Scores ``logits[q, l] = sum_i a_il <x_i, x_q>``
    (their kernel form), ``W = X^T a``.

    As in the published code the QP is solved in float32 (float64 with
    ``double_precision=True``) whatever the features' dtype; ``p, G, h, A, b`` are
    constants (detached) and gradients reach ``support`` through the block Gram
    matrix (qpth's KKT backward) and, with ``query``, through the kernel scores.
    On CPU, qpth's batched LU factorisations run one episode at a time when torch uses
    several threads (:func:`_qpth_cpu_lu_workaround`: a torch 2.14.1 CPU bug).
    Returns ``(logits, W)`` in the support's dtype.
    """
    from qpth.qp import QPFunction   # a dependency of metasparse (setup.cfg)
    _qpth_cpu_lu_workaround()

    _check(query, support, support_labels, n_way)
    B, n, d = support.shape
    k = int(n_way)
    qp_dtype = torch.float64 if double_precision else torch.float32
    dev = support.device
    Xs = support.to(qp_dtype)
    kernel = Xs @ Xs.transpose(1, 2)                                           # (B, n, n)
    Q = _block_kron_identity(kernel, k) + torch.eye(n * k, dtype=qp_dtype, device=dev)
    y = one_hot(support_labels, k, qp_dtype).reshape(B, n * k)
    p = -y
    # materialised per episode, as MetaOptNet's .cuda() copies of the expanded identities are
    G = torch.eye(n * k, dtype=qp_dtype, device=dev).expand(B, n * k, n * k).contiguous()
    h = float(C_reg) * y
    A = torch.kron(torch.eye(n, dtype=qp_dtype, device=dev),
                   torch.ones(1, k, dtype=qp_dtype, device=dev)).expand(B, n, n * k).contiguous()
    b = torch.zeros(B, n, dtype=qp_dtype, device=dev)
    alpha = QPFunction(verbose=False, maxIter=int(max_iter))(
        Q, p.detach(), G.detach(), h.detach(), A.detach(), b.detach())
    alpha = alpha.reshape(B, n, k).to(support.dtype)
    compat = query @ support.transpose(1, 2)                                   # (B, nq, n)
    logits = compat @ alpha
    W = support.transpose(1, 2) @ alpha
    return logits, W


# ------------------------------------------------------ Lachapelle et al. (ICML 2023)
def _import_torchopt():
    try:
        import torchopt
    except ImportError as exc:
        raise ImportError(TORCHOPT_HINT) from exc
    return torchopt


def _bst(V: torch.Tensor, l1: Optional[torch.Tensor]) -> torch.Tensor:
    """Row-wise block soft-thresholding of V (B, d, k) at l1 (B,); identity when l1 is None
    (their ``BST`` returns its input when ``lambda1 == 0``)."""
    if l1 is None:
        return V
    nrm = row_norms(V)
    safe = torch.where(nrm > 0, nrm, torch.ones_like(nrm))
    factor = torch.clamp(1.0 - l1[:, None] / safe, min=0.0) * (nrm > 0).to(V.dtype)
    return V * factor.unsqueeze(-1)


def _pgd_step(Lam, X, Y, eta, l1, lambda2, dual_reg):
    r"""One projected gradient step on the dual (their ``inner_step_pgd_``):
    ``proj_simplex_rows(Lam - eta * g)`` with ``g = X BST(X^T (Lam - Y), lambda1)/lambda2
    + rho (Lam - Y)/lambda2 + Y`` (``-grad D`` plus the all-ones matrix, which the
    row-wise simplex projection ignores)."""
    R = Lam - Y
    V = ((R.transpose(1, 2) @ X).transpose(1, 2))                              # X^T (Lam - Y)
    g = (X @ _bst(V, l1) + dual_reg * R) / lambda2 + Y
    return project_simplex(Lam - eta[:, None, None] * g)


def paper_pgd_head(query: torch.Tensor, support: torch.Tensor, support_labels: torch.Tensor,
                   n_way: int, n_steps: int = 5, lambda_ratio: float = 0.0, lambda2: float = 1000.0,
                   dual_reg: float = 1.0, *, lambda1: Optional[float] = None,
                   cg_maxiter: int = 5, cg_ridge: Optional[float] = None, cg_rtol: float = 1e-5
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""The group-Lasso multiclass SVM head as published by Lachapelle et al. (ICML 2023).

    Follows ``SparseMetaOptNetHead_SVM_dual`` (``algo='pgd'``) in
    ``metaoptnet/models/classification_heads.py`` and ``inner_step_pgd_`` in
    ``metaoptnet/models/utils.py`` of github.com/tristandeleu/synergies-disentanglement-sparsity
    (defaults from its ``metaoptnet/train.py``: ``--num_steps 5``, ``--lambda1 0``,
    ``--lambda2 1000``, ``--dual_reg 1``; it pins torchopt 0.5.1):

    * init ``Lam0 = 1/k`` (every entry);
    * fixed step ``eta = 1 / max|eig(X X^T / lambda2) + rho/lambda2|
      = lambda2 / (sigma_max(X)^2 + rho)`` per episode (1/L, L the Lipschitz constant
      of the dual gradient), no momentum, no line search;
    * ``n_steps`` steps ``Lam <- proj_simplex_rows(Lam + eta grad D(Lam))`` (their
      gradient of ``-D`` plus a constant, see :func:`_pgd_step`), without autograd;
    * backward: ``torchopt.diff.implicit.custom_root`` on the fixed-point residual
      ``F(Lam, X) = Lam - step(Lam, X)`` w.r.t. ``X`` (``argnums=1``), linear system
      by ``torchopt.linear_solve.solve_normal_cg(maxiter=5, atol=0,
      ridge=1/max_b(eta_b)/1000)``; one CG over the whole batch (torchopt flattens the
      (B, n, k) tensor), as in the published code;
    * ``W = BST_rows(X^T (Y - Lam), lambda1) / lambda2``, ``logits = query @ W``.

    Differences from the published code: the batch is handled by batched tensor ops
    instead of ``functorch.vmap`` (same arithmetic), the largest eigenvalue comes from
    ``eigvalsh`` (theirs: ``eigvals`` of the symmetric Gram), and ``lambda1`` may be per
    episode: ``lambda_ratio * lambda_max`` (``lambda_max`` of :mod:`metasparse.solvers`,
    a constant for the backward pass) or an absolute ``lambda1=`` (their option).
    ``cg_maxiter`` (default: their 5) is exposed so tests can check the implicit
    gradient with an accurate solve.  Returns ``(logits, W)``.
    """
    torchopt = _import_torchopt()
    _check(query, support, support_labels, n_way)
    if int(n_steps) < 0:
        raise ValueError(f"n_steps: expected >= 0, got {n_steps}")
    lambda2, dual_reg = float(lambda2), float(dual_reg)
    if not lambda2 > 0 or dual_reg < 0:
        raise ValueError(f"expected lambda2 > 0 and dual_reg >= 0, got {lambda2}, {dual_reg}")
    B, n, d = support.shape
    k = int(n_way)
    Y = one_hot(support_labels, k, support.dtype)
    with torch.no_grad():
        l1_vec = _lambda1(support, Y, lambda_ratio, lambda1, lambda2, dual_reg)
        l1 = l1_vec if bool((l1_vec != 0).any()) else None
        Xd = support.detach()
        top = torch.linalg.eigvalsh(Xd @ Xd.transpose(1, 2) / lambda2)[..., -1]
        eta = 1.0 / (top + dual_reg / lambda2).abs()                           # (B,)
        ridge = float(1.0 / eta.max() / 1000) if cg_ridge is None else float(cg_ridge)

    def optimality_fn(params, inputs, targets, stepsizes):
        with torch.enable_grad():
            return params - _pgd_step(params, inputs, targets, stepsizes, l1, lambda2, dual_reg)

    @torchopt.diff.implicit.custom_root(
        optimality_fn, argnums=1, has_aux=False,
        solve=torchopt.linear_solve.solve_normal_cg(maxiter=int(cg_maxiter), atol=0, rtol=float(cg_rtol),
                                                     ridge=ridge))
    def inner_solver(params, inputs, targets, stepsizes):
        with torch.no_grad():
            for _ in range(int(n_steps)):
                params = _pgd_step(params, inputs, targets, stepsizes, l1, lambda2, dual_reg)
            return params

    init = torch.full((B, n, k), 1.0 / k, dtype=support.dtype, device=support.device)
    Lam = inner_solver(init, support, Y, eta)
    V = ((Y - Lam).transpose(1, 2) @ support).transpose(1, 2)                 # X^T (Y - Lam)
    W = _bst(V, l1) / lambda2
    return query @ W, W


# ------------------------------------------------------------------ exact reference
def exact_solution(support: torch.Tensor, support_labels: torch.Tensor, n_way: int,
                   lambda_ratio: Optional[float], lambda2: float, dual_reg: float, *,
                   lambda1: Optional[float] = None, tol: float = 1e-13, max_iter: int = 200000,
                   return_bound: bool = False):
    r"""Reference ``W* = argmin P(W)`` per episode, (B, d, k) float64, detached.

    Our batched dual solver (:class:`metasparse.solvers.GroupSparseSVMDual`, FISTA with
    restarts) run in float64 to a relative duality gap ``tol`` (or its float64 rounding
    floor), started from the dual optimum at ``W = 0``; ``lambda1 = lambda_ratio *
    lambda_max`` per episode (``lambda1 >= lambda_max`` gives ``W* = 0`` exactly), or an
    absolute ``lambda1=``.  The primal is ``lambda2``-strongly convex, so the returned
    ``W`` satisfies ``||W - W*||_F <= sqrt(2 gap / lambda2)`` with ``gap`` the duality gap
    at the returned pair; ``return_bound=True`` also returns that certified bound
    divided by ``||W||_F`` (B,) (a bound on the relative error of the reference).
    tests/test_head_baselines.py checks it against cvxpy (Clarabel) on small problems.
    """
    _check(None, support, support_labels, n_way)
    X = support.detach().to(torch.float64)
    Y = one_hot(support_labels, int(n_way), torch.float64)
    lambda2, dual_reg = float(lambda2), float(dual_reg)
    init = None
    lmax = None
    if lambda1 is None and float(lambda_ratio or 0.0) > 0:
        lmax, init = _lambda_max(X, Y, lambda2, dual_reg, cpu_threads=None)
        l1 = float(lambda_ratio) * lmax
    else:
        l1 = _lambda1(X, Y, lambda_ratio, lambda1, lambda2, dual_reg)
    solver = GroupSparseSVMDual(tol=tol, max_iter=max_iter, patience=50, cpu_threads=None)
    with torch.no_grad():
        sol = solver.run(X, Y, l1, lambda2, dual_reg, init=init)
        W, gap = sol.weights.clone(), sol.gap.clone()
        if lmax is not None:
            zero = l1 >= lmax
            W[zero] = 0.0
            gap[zero] = 0.0
        bound = torch.sqrt(2.0 * gap.clamp(min=0.0) / lambda2)
        nrm = W.flatten(1).norm(dim=1)
        rel_bound = torch.where(nrm > 0, bound / torch.where(nrm > 0, nrm, torch.ones_like(nrm)),
                                torch.where(bound > 0, torch.full_like(bound, math.inf), bound))
    if bool((rel_bound > 1e-5).any()):
        warnings.warn(f"exact_solution: certified relative error only {float(rel_bound.max()):.1e} "
                      f"(rel gap {float(sol.rel_gap.max()):.1e}); raise max_iter", RuntimeWarning)
    return (W, rel_bound) if return_bound else W


def relative_w_error(W: torch.Tensor, W_ref: torch.Tensor) -> torch.Tensor:
    r"""``||W - W_ref||_F / ||W_ref||_F`` per episode, (B,) float64 (detached).

    An episode with ``W_ref = 0`` gives 0 when ``W = 0`` too and ``inf`` otherwise.
    """
    if W.shape != W_ref.shape:
        raise ValueError(f"W {tuple(W.shape)} and W_ref {tuple(W_ref.shape)} differ in shape")
    W = W.detach().to(torch.float64).flatten(1)
    R = W_ref.detach().to(device=W.device, dtype=torch.float64).flatten(1)
    num = (W - R).norm(dim=1)
    den = R.norm(dim=1)
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, num / safe,
                       torch.where(num > 0, torch.full_like(num, math.inf), torch.zeros_like(num)))
